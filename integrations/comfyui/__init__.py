"""ComfyUI node pack for DoSSR: link or clone this folder into ComfyUI/custom_nodes/.

The nodes live in the `dossr` package (dossr_cli.comfyui), installed into ComfyUI's Python
with pip; this file only hands ComfyUI their mappings.
"""

try:
    from dossr_cli.comfyui.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, register_weights_folder
except ImportError as error:  # ComfyUI logs this line and goes on without the pack
    raise ImportError(f"the DoSSR nodes need the dossr package in ComfyUI's Python ({error}): run "
                      "`python -m pip install /path/to/dossr` with the python that runs ComfyUI") from error

register_weights_folder()
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]

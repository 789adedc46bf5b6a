"""DoSSR in ComfyUI: the nodes (nodes.py) and ComfyUI's tensors to and from ours (layout.py).

The pack ComfyUI loads is integrations/comfyui/, which re-exports `nodes`' mappings.
"""

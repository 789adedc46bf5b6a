"""A stand-in for the parts of ComfyUI's `comfy` package the DoSSR nodes call, for tests without ComfyUI.

Signatures and behaviour follow ComfyUI 3cd7b32f (comfy/model_management.py, comfy/utils.py);
it stands in for ComfyUI only, never for dossr's own code. The real thing is integrations/comfyui/e2e.sh.
"""

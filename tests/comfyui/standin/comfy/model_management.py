"""comfy.model_management as the nodes use it: the device, the dtype choice, freeing memory, interrupts."""

import threading

import torch

free_bytes = 1 << 40  # what get_free_memory reports; tests lower it to make memory short
dtype_asked: list[dict] = []  # each unet_dtype call's arguments
freed: list[tuple[float, torch.device]] = []  # each free_memory call (ComfyUI's own models: none here)
unet_choice = torch.float32


class InterruptProcessingException(Exception):
    pass


interrupt_processing_mutex = threading.RLock()
interrupt_processing = False


def interrupt_current_processing(value=True):
    global interrupt_processing
    with interrupt_processing_mutex:
        interrupt_processing = value


def processing_interrupted():
    with interrupt_processing_mutex:
        return interrupt_processing


def throw_exception_if_processing_interrupted():
    global interrupt_processing
    with interrupt_processing_mutex:
        if interrupt_processing:
            interrupt_processing = False
            raise InterruptProcessingException()


def get_torch_device():
    return torch.device("cpu")


def intermediate_device():
    return torch.device("cpu")


def unet_dtype(device=None, model_params=0, supported_dtypes=(torch.float16, torch.bfloat16, torch.float32),
               weight_dtype=None):
    dtype_asked.append({"device": device, "supported_dtypes": list(supported_dtypes)})
    return unet_choice


def get_free_memory(dev=None, torch_free_too=False):
    return (free_bytes, free_bytes) if torch_free_too else free_bytes


def free_memory(memory_required, device, keep_loaded=()):
    freed.append((memory_required, device))
    return []


def soft_empty_cache(force=False):
    pass


def unload_all_models():
    free_memory(1e30, get_torch_device())

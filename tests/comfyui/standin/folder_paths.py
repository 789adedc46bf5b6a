"""folder_paths as the nodes use it: the models folder and named model folders (ComfyUI's own logic)."""

import os

models_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")  # tests point it elsewhere
supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {}


def set_models_dir(path):
    global models_dir
    models_dir = str(path)
    folder_names_and_paths.clear()
    folder_names_and_paths["upscale_models"] = ([os.path.join(models_dir, "upscale_models")], supported_pt_extensions)


def add_model_folder_path(folder_name, full_folder_path, is_default=False):
    if folder_name not in folder_names_and_paths:
        folder_names_and_paths[folder_name] = ([full_folder_path], set())
        return
    paths, _ = folder_names_and_paths[folder_name]
    if full_folder_path in paths:
        if is_default and paths[0] != full_folder_path:
            paths.remove(full_folder_path)
            paths.insert(0, full_folder_path)
    elif is_default:
        paths.insert(0, full_folder_path)
    else:
        paths.append(full_folder_path)


def get_folder_paths(folder_name):
    return folder_names_and_paths[folder_name][0][:]  # KeyError for an unknown name, as ComfyUI's


set_models_dir(models_dir)

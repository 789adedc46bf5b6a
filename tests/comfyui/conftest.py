"""Fixtures for the ComfyUI node tests: the stand-in of ComfyUI's modules (standin/) on sys.path,
a models folder holding the tiny bundle, and the loaded nodes."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from dossr_cli.checkpoint.bundle import save_bundle
from dossr_cli.random_weights import random_networks

STANDIN = Path(__file__).parent / "standin"
COMFY_MODULES = ("comfy", "comfy.model_management", "comfy.utils", "folder_paths")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_bundle(random_networks(seed=0), tmp_path_factory.mktemp("weights") / "tiny")


@pytest.fixture
def comfy(tmp_path: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch):
    """ComfyUI's modules (the stand-in), fresh for each test, with models/dossr/tiny in place."""
    from dossr_cli.comfyui import nodes

    for name in COMFY_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(STANDIN))
    mm = importlib.import_module("comfy.model_management")
    utils = importlib.import_module("comfy.utils")
    folder_paths = importlib.import_module("folder_paths")
    models = tmp_path / "models"
    (models / "dossr").mkdir(parents=True)
    (models / "dossr" / "tiny").symlink_to(tiny_bundle, target_is_directory=True)
    folder_paths.set_models_dir(models)
    nodes.release_models()
    yield SimpleNamespace(mm=mm, utils=utils, folder_paths=folder_paths, models=models)
    nodes.release_models()
    for name in COMFY_MODULES:
        sys.modules.pop(name, None)


@pytest.fixture
def tiny_model(comfy):
    from dossr_cli.comfyui.nodes import DoSSRModelLoader

    return DoSSRModelLoader().load("tiny", "auto", False)[0]

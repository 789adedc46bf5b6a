"""Where weights live and how `--weights NAME|PATH|hf:REPO` finds them.

Resolution order (the first that applies wins):
1. an explicit bundle folder, or a checkpoint file (imported once into the cache, keyed
   by its sha256, and reused after);
2. `DOSSR_WEIGHTS` when no --weights was given (a name, path or hf: spec);
3. `hf:ORG/REPO[@REV]`: a bundle on the Hugging Face Hub (its cache; no network when present);
4. a named bundle in the user cache;
5. a download of a named bundle when asked (`--download`, `dossr weights download`), or at a
   terminal after saying what and how big and getting a yes;
6. otherwise `WeightsNotFoundError`, whose message says exactly how to get the weights.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from dossr_cli.checkpoint.bundle import CONFIG_NAME, BundleError, read_bundle_config, sha256_file
from dossr_cli.checkpoint.paths import cache_root
from dossr_cli.errors import WeightsError

DEFAULT_NAME = "default"
CHECKPOINT_SUFFIXES = (".ckpt", ".pth", ".pt", ".bin")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class WeightsNotFoundError(WeightsError):
    exit_code = 1


def weights_dir() -> Path:
    return cache_root() / "weights"


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise WeightsError(f"bad weights name {name!r}: use letters, digits, '.', '_' or '-'")
    return name


@dataclass(frozen=True)
class KnownBundle:
    name: str
    description: str
    recommended_steps: int
    source: dict[str, Any]
    approx_bytes: int
    licence: str


def manifest() -> dict[str, KnownBundle]:
    """The bundles listed in weights/manifest.json.

    Read from the checkout's weights/ (editable installs cannot remap a subpackage), else
    from the copy a wheel ships as dossr_cli/_weights.
    """
    checkout = Path(__file__).resolve().parents[2] / "weights" / "manifest.json"
    if checkout.is_file():
        text = checkout.read_text()
    else:
        text = resources.files("dossr_cli._weights").joinpath("manifest.json").read_text()
    data = json.loads(text)
    return {
        name: KnownBundle(name, entry["description"], entry["recommended_steps"], entry["source"],
                          entry["approx_bytes"], entry["licence"])
        for name, entry in data["bundles"].items()
    }


def installed_bundles() -> dict[str, Path]:
    """Named bundles in the cache (complete ones only: a bundle appears by atomic rename)."""
    root = weights_dir()
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if (p / CONFIG_NAME).is_file() and not p.name.startswith(".")}


def imported_bundle_path(checkpoint: Path) -> Path:
    """The cache folder a checkpoint file is imported into, keyed by its content."""
    return weights_dir() / f"imported-{sha256_file(checkpoint)[:16]}"


def import_into_cache(checkpoint: Path, progress: Callable[[str], None] | None = None) -> Path:
    from dossr_cli.checkpoint.importer import import_checkpoint

    dest = imported_bundle_path(checkpoint)
    if (dest / CONFIG_NAME).is_file():
        return dest
    if progress:
        progress(f"importing {checkpoint} into {dest} (once; later runs reuse it)")
    return import_checkpoint(checkpoint, dest, name=dest.name)


def resolve_weights(
    spec: str | None,
    *,
    download: bool = False,
    confirm: Callable[[str], bool] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """The bundle folder to load for `spec` (see the module docstring for the order)."""
    if spec is None:
        spec = os.environ.get("DOSSR_WEIGHTS") or DEFAULT_NAME
    path = Path(spec).expanduser()
    if path.is_dir():
        read_bundle_config(path)  # a clear error if it is not a bundle
        return path
    if path.is_file():
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise WeightsError(f"{path} is neither a bundle folder nor a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})")
        return import_into_cache(path, progress)
    if spec.startswith("hf:"):
        from dossr_cli.checkpoint.hub import download_hf_bundle, parse_hf_spec

        repo, revision = parse_hf_spec(spec)
        return download_hf_bundle(repo, revision)
    if os.sep in spec or spec.endswith(CHECKPOINT_SUFFIXES):
        raise WeightsNotFoundError(f"{spec}: no such file or folder")
    name = check_name(spec)
    installed = installed_bundles()
    if name in installed:
        return installed[name]
    known = manifest()
    if name not in known:
        names = sorted(set(known) | set(installed))
        raise WeightsNotFoundError(f"unknown weights {name!r}; known: {', '.join(names)} "
                                   "(or pass a bundle folder, a .ckpt file or hf:ORG/REPO)")
    bundle = known[name]
    question = (f"The '{name}' weights are not on this machine. Download {describe_source(bundle)} "
                f"(about {bundle.approx_bytes / 1e9:.1f} GB) into {weights_dir() / name}?")
    if download or (confirm is not None and confirm(question)):
        return download_named(name, progress=progress)
    raise WeightsNotFoundError(missing_weights_help(name, bundle))


def describe_source(bundle: KnownBundle) -> str:
    if os.environ.get("DOSSR_HF_REPO"):
        return f"the bundle from the Hugging Face Hub repo {os.environ['DOSSR_HF_REPO']}"
    return f"{bundle.source['file']} from the authors' Google Drive folder"


def missing_weights_help(name: str, bundle: KnownBundle) -> str:
    source = bundle.source
    return "\n".join([
        f"the '{name}' weights are not on this machine ({bundle.description}). Get them with one of:",
        f"  dossr weights download {name}          # {source['file']} from the authors' Google Drive, then import",
        f"  download {source['file']} by hand from {source['url']}",
        f"    then: dossr weights import {source['file']} --name {name}",
        "  or point to weights you have: --weights PATH (bundle folder or .ckpt) or DOSSR_WEIGHTS=PATH",
        "  or a converted bundle on the Hugging Face Hub: --weights hf:ORG/REPO",
    ])


def known_hashes_path() -> Path:
    return cache_root() / "known_sha256.json"


def record_or_check_sha256(file_name: str, sha256: str) -> None:
    """The first download's sha256 is recorded; every later one must match it."""
    path = known_hashes_path()
    known = json.loads(path.read_text()) if path.is_file() else {}
    if file_name in known and known[file_name] != sha256:
        raise WeightsError(f"{file_name} differs from the copy downloaded before (sha256 {sha256[:12]}... vs "
                           f"{known[file_name][:12]}...): the download is corrupt or the file was changed upstream; "
                           f"delete {path} only if you trust the new file")
    known[file_name] = sha256
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(known, indent=2) + "\n")
    os.replace(tmp, path)


def download_named(name: str, progress: Callable[[str], None] | None = None, keep_checkpoint: bool = False) -> Path:
    """Fetch a manifest bundle: from DOSSR_HF_REPO when set, else the authors' Drive file + import."""
    from dossr_cli.checkpoint import drive, hub
    from dossr_cli.checkpoint.importer import import_checkpoint

    known = manifest()
    if name not in known:
        raise WeightsNotFoundError(f"unknown weights {name!r}; known: {', '.join(sorted(known))}")
    if os.environ.get("DOSSR_HF_REPO"):
        repo, revision = hub.parse_hf_spec("hf:" + os.environ["DOSSR_HF_REPO"])
        return hub.download_hf_bundle(repo, revision)
    dest = weights_dir() / name
    if (dest / CONFIG_NAME).is_file():
        return dest
    source = known[name].source
    if source["kind"] != "gdrive-folder":
        raise WeightsError(f"manifest entry {name!r} has an unknown source kind {source['kind']!r}")
    checkpoint = cache_root() / "downloads" / source["file"]
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        progress(f"downloading {source['file']} from {source['url']}")
    drive.download_from_drive_folder(source["folder_id"], source["file"], checkpoint,
                                     expected_size=source.get("bytes"), expected_sha256=source.get("sha256"))
    record_or_check_sha256(source["file"], sha256_file(checkpoint))
    if progress:
        progress(f"importing {checkpoint} into {dest}")
    bundle = import_checkpoint(checkpoint, dest, name=name)
    if not keep_checkpoint:
        checkpoint.unlink()
    return bundle


def remove_bundle(name: str) -> Path:
    path = installed_bundles().get(check_name(name))
    if path is None:
        raise WeightsNotFoundError(f"no weights named {name!r} in {weights_dir()}")
    shutil.rmtree(path)
    return path


def bundle_info(path: Path) -> dict[str, Any]:
    config = read_bundle_config(path)
    size = sum(entry["bytes"] for entry in config["components"].values())
    return {"path": str(path), "bytes": size, **{k: v for k, v in config.items() if k != "components"}}


__all__ = ["BundleError", "KnownBundle", "WeightsNotFoundError", "bundle_info", "cache_root", "download_named",
           "import_into_cache", "installed_bundles", "manifest", "remove_bundle", "resolve_weights", "weights_dir"]

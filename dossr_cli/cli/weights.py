"""`dossr weights ...`: import, download, list, info, verify, path, rm."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dossr_cli.cli.console import say, stdout
from dossr_cli.errors import UsageError

app = typer.Typer(help="Get, import and manage model weights.", no_args_is_help=True)

Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]


@app.command("import")
def import_(
    checkpoint: Annotated[Path, typer.Argument(help="The authors' .ckpt file (e.g. dossr_default.ckpt).")],
    name: Annotated[str | None, typer.Option("--name", help="Name in the cache (default: from the file name).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the bundle here instead of the cache.")] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="Store as fp16, bf16 or fp32 (default: as in the file).")]
    = None,
    debug: Debug = False,
) -> None:
    """Convert the authors' checkpoint into a dossr bundle (safetensors), safely."""
    from dossr_cli.checkpoint import store
    from dossr_cli.checkpoint.importer import BUNDLE_DTYPES, import_checkpoint

    if dtype is not None and dtype not in BUNDLE_DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(BUNDLE_DTYPES)}; got {dtype!r}")
    if out is None:
        stem = checkpoint.stem.removeprefix("dossr_")
        name = store.check_name(name or stem)
        out = store.weights_dir() / name
    if out.exists():
        raise UsageError(f"{out} already exists: remove it first (dossr weights rm NAME) or choose --name/--out")
    bundle = import_checkpoint(checkpoint, out, dtype=dtype, name=name or out.name)
    say(f"imported {checkpoint} -> {bundle}")
    stdout.print(str(bundle), markup=False)


@app.command()
def download(
    name: Annotated[str, typer.Argument(help="A name from `dossr weights list` (default, onestep).")] = "default",
    keep_checkpoint: Annotated[bool, typer.Option(help="Keep the downloaded .ckpt after import.")] = False,
    debug: Debug = False,
) -> None:
    """Download named weights (the authors' Google Drive file, or DOSSR_HF_REPO) and import them."""
    from dossr_cli.checkpoint import store
    stdout.print(str(store.download_named(name, progress=say, keep_checkpoint=keep_checkpoint)), markup=False)


@app.command("list")
def list_(json_output: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False) -> None:
    """Known and installed weights."""
    from dossr_cli.checkpoint import store
    installed = store.installed_bundles()
    rows = []
    for name, bundle in store.manifest().items():
        rows.append({"name": name, "installed": name in installed, "path": str(installed.get(name, "")),
                     "steps": bundle.recommended_steps, "description": bundle.description})
    for name, path in installed.items():
        if name not in store.manifest():
            rows.append({"name": name, "installed": True, "path": str(path), "steps": None, "description": "imported"})
    for row in rows:
        if json_output:
            stdout.print(json.dumps(row), markup=False)
        else:
            mark = "installed" if row["installed"] else "not installed"
            stdout.print(f"{row['name']:<28} {mark:<14} {row['description']}", markup=False)


@app.command()
def info(name: Annotated[str, typer.Argument(help="Name or bundle folder.")] = "default", debug: Debug = False) -> None:
    """The bundle's config and source, as JSON."""
    from dossr_cli.checkpoint import store
    stdout.print(json.dumps(store.bundle_info(_installed(name)), indent=2), markup=False)


@app.command()
def verify(name: Annotated[str, typer.Argument(help="Name or bundle folder.")] = "default", debug: Debug = False) -> None:
    """Check every file's size and sha256 against the bundle's record."""
    from dossr_cli.checkpoint.bundle import verify_bundle
    path = _installed(name)
    verify_bundle(path)
    say(f"{path}: ok")


@app.command()
def path(name: Annotated[str, typer.Argument(help="Name or bundle folder.")] = "default", debug: Debug = False) -> None:
    """Print the bundle's folder (for scripts)."""
    stdout.print(str(_installed(name)), markup=False)


@app.command()
def rm(name: Annotated[str, typer.Argument(help="Name in the cache.")], debug: Debug = False) -> None:
    """Delete named weights from the cache."""
    from dossr_cli.checkpoint import store
    say(f"removed {store.remove_bundle(name)}")


def _installed(name: str) -> Path:
    """Only what is already here: these commands never download."""
    from dossr_cli.checkpoint import store
    candidate = Path(name).expanduser()
    if candidate.is_dir():
        return candidate
    installed = store.installed_bundles()
    if name not in installed:
        raise store.WeightsNotFoundError(f"no weights named {name!r} in {store.weights_dir()} "
                                         f"(installed: {', '.join(installed) or 'none'})")
    return installed[name]

"""Helpers for the command-line tests: run `dossr` in process or as a subprocess, make and read images.

`dossr` runs in two ways here: in this process through Typer's runner (fast, used for
almost everything) and as a real subprocess (pipes, signals, exit codes end to end).
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from conftest import smooth_image  # tests/conftest.py: tests/cli is a package, so this name is not ours
from PIL import Image
from typer.testing import CliRunner

from dossr_cli.cli.app import main

# Settings a developer's environment may have that would change what is tested: colour forced
# on without a terminal, or default weights that are not the ones under test.
_NOT_INHERITED = ("FORCE_COLOR", "CLICOLOR_FORCE", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "DOSSR_WEIGHTS")


@dataclass(frozen=True)
class Result:
    code: int
    stdout: bytes
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("dossr: error:")]


def run_in_process(args: list[str], stdin: bytes | None = None) -> Result:
    """`dossr ARGS` through Typer's runner; `main` always ends in SystemExit."""
    with CliRunner().isolation(input=stdin) as (out, err, _):
        try:
            main([str(arg) for arg in args])
        except SystemExit as done:
            code = done.code
        else:
            raise AssertionError("main() returned instead of exiting")
        return Result(code if isinstance(code, int) else int(code is not None), out.getvalue(), err.getvalue().decode())


def subprocess_env() -> dict[str, str]:
    """This test's environment (its DOSSR_CACHE_DIR included) for a child `dossr`."""
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def default_sigint() -> None:
    """For Popen's preexec_fn: a child started from a shell's background job inherits SIGINT ignored, and
    Python then keeps it ignored; the Ctrl-C tests need the child to hear it as a terminal's child would."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def dossr_command(*args: object) -> list[str]:
    return [sys.executable, "-m", "dossr_cli", *map(str, args)]


def run_subprocess(*args: object, stdin: bytes | None = None, timeout: float = 120) -> Result:
    done = subprocess.run(dossr_command(*args), input=stdin, capture_output=True, env=subprocess_env(),
                          timeout=timeout, check=False)
    return Result(done.returncode, done.stdout, done.stderr.decode())


def batch_summary(stderr: str) -> dict[str, int]:
    """The counts in `dossr batch`'s summary table, e.g. {"done": 3, "skipped": 0, "failed": 1}."""
    return {m[1]: int(m[2]) for m in re.finditer(r"^\s*(done|skipped|failed)\W+(\d+)\s*$", stderr, re.MULTILINE)}


# ------------------------------------------------------------------------------------------------ images


def save(image: Image.Image, path: Path, **options: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def decode(source: Path | bytes) -> Image.Image:
    """Fully decoded, so a truncated or corrupt output fails here."""
    image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    image.load()
    return image


def files_in(folder: Path) -> set[str]:
    """Every file under `folder`, hidden temporaries included, relative and with / separators."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


__all__ = ["Result", "batch_summary", "decode", "dossr_command", "files_in", "run_in_process", "run_subprocess",
           "save", "smooth_image", "subprocess_env"]

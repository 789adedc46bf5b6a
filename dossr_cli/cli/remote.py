"""`dossr upscale --server URL`: each image's work done by a running `dossr serve`, the rest as local.

The command keeps every local check (outputs, --overwrite, missing inputs, stdin/stdout);
only the per-image step goes to the server, whose progress and notes drive the same bars and
lines as a local run. No torch is imported (unless --compare needs the picture).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from dossr_cli import imageio
from dossr_cli.client import Client, ServerError, ServerUnavailable
from dossr_cli.errors import UsageError
from dossr_cli.trust import TrustNumbers

if TYPE_CHECKING:
    import numpy as np

    from dossr_cli.batch.params import UpscaleParams
    from dossr_cli.cli.progress import Bars

# The options whose choice is the server's (its model, device and limits), as the command names them.
STDIN_NAME = "stdin"  # what the upload from stdin is called: a local run's name for it, in the same messages
SERVER_CHOICES = ("--weights", "--download", "--device", "--dtype", "--compile", "--max-memory", "--max-pixels",
                  "--max-output-pixels")


def refuse_server_choices(given: dict[str, bool]) -> None:
    """A local-only option given with --server would be silently ignored: name it instead."""
    for option in SERVER_CHOICES:
        if given.get(option):
            raise UsageError(f"{option} is the server's choice, not the client's: drop it, or upscale locally "
                             "without --server (--server '' overrides DOSSR_SERVER)")


def connect(url: str, token: str | None) -> Client:
    """The client, once the server has answered: an unreachable server or a missing token is one
    line before any input is read, not one per image."""
    client = Client(url, token)
    client.health()
    return client


@dataclass(frozen=True)
class RemoteResult:
    """What the command's loop reads of a local JobResult, from the server's answer."""

    data: bytes
    format: str
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    seed: int
    seconds: float
    notes: tuple[str, ...]
    source: bytes  # the input as sent, decoded again only for --compare
    trust: TrustNumbers | None  # the server's measures (the numbers only: no maps travel), flagged here

    @cached_property
    def lr_rgb(self) -> np.ndarray:
        return imageio.read_image(self.source, max_pixels=None).rgb

    @cached_property
    def rgb(self) -> np.ndarray:
        return imageio.read_image(self.data, max_pixels=None).rgb


def run_remote(client: Client, source: Path | bytes, params: UpscaleParams, out_format: str | None, bars: Bars,
               notify: Callable[[str], None]) -> RemoteResult:
    """One image (a file, or stdin's bytes) through the server, with the command's options and the format
    the local rule picks; its progress drives `bars`, its notes go to `notify` as they happen."""
    data, name = (source, STDIN_NAME) if isinstance(source, bytes) else (_read(source), source.name)
    options = {**params.pixel_params(), "quality": params.quality, "metadata": params.metadata,
               "format": out_format or content_format(data)}

    def progress(step: int, steps: int, tile: int, tiles: int) -> None:
        if steps:
            bars.step(step, steps)
        bars.tiles(tile, tiles)

    try:
        result = client.upscale(data, name, on_progress=progress, on_note=notify, **options)
    except ServerError as error:  # the server names the upload; a local run names the path, or plain "stdin"
        message, sent = str(error), f"'{name}': "
        if message.startswith(sent):
            here = STDIN_NAME if isinstance(source, bytes) else f"'{source}'"
            raise ServerError(error.status, f"{here}: {message[len(sent):]}") from None
        raise
    measured = result.job.get("trust")
    trust = TrustNumbers.from_json(measured) if measured else None
    return RemoteResult(result.data, result.format, result.input_size, result.output_size, result.seed,
                        result.seconds, result.notes, data, trust)


def _read(path: Path) -> bytes:
    """A file's bytes to send; one that cannot be read fails with the local run's own message."""
    try:
        return path.read_bytes()
    except OSError:
        imageio.read_image(path)  # raises the ImageReadError a local run gives (permission denied, ...)
        raise


def content_format(data: bytes) -> str | None:
    """The format the bytes hold, as a local run picks it for stdout (its content, whatever a name says);
    None when unknown, and the server's decoder gives the reason."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=["PNG", "JPEG", "WEBP", "TIFF", "BMP"]) as image:  # our readers only
            return imageio.format_from_name(f"x.{(image.format or '').lower()}") or (
                "jpg" if image.format == "MPO" else None)
    except Exception:  # noqa: BLE001 - any failure to parse: the server says what is wrong
        return None


__all__ = ["SERVER_CHOICES", "STDIN_NAME", "RemoteResult", "ServerUnavailable", "connect", "content_format",
           "refuse_server_choices", "run_remote"]

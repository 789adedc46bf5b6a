"""Downloads of weights over plain HTTP: resumable, verified, and never half-used.

Every message says what was fetched from where and what to do next (USER_LESSONS 12).
A large file goes to `<dest>.partial` and resumes there with an HTTP Range request, so
an interrupted or Ctrl-C'd transfer continues where it stopped; nothing appears under
`dest` until its size and sha256 have checked out. With `DOSSR_OFFLINE` or
`HF_HUB_OFFLINE` set, nothing here opens a connection: what is needed and not present
raises `OfflineError`. The two sources build on this: drive.py (the authors' checkpoints
on Google Drive) and hub.py (our bundles on the Hugging Face Hub).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import requests
from huggingface_hub import constants as hf_constants
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from dossr_cli.checkpoint.bundle import sha256_file
from dossr_cli.errors import WeightsError

OFFLINE_ENVS = ("DOSSR_OFFLINE", "HF_HUB_OFFLINE")

TIMEOUT_S = (20.0, 60.0)  # (connect, between bytes): a stalled transfer fails and can resume
RETRY_BACKOFF_S = 2.0  # waits 2, 4, 8 s between attempts after a broken transfer
DEFAULT_RETRIES = 3
MAX_PAGE_BYTES = 2 << 20  # an HTML answer larger than this is not one of Drive's pages
USER_AGENT = "dossr (python-requests)"
# the folder view serves its plain listing to browsers; gdown sends a desktop Chrome agent too

_TRUE = {"1", "true", "yes", "on"}
_ERRNO = re.compile(r"\[Errno -?\d+\][^'\")\]]+")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


class DownloadError(WeightsError, RuntimeError):
    """A download that failed; the one-line message says from where and what to do."""


class OfflineError(DownloadError):
    """Offline mode is on and what was asked for is not on disk."""


# ---------------------------------------------------------------------------- offline


def offline_reason() -> str | None:
    """The setting that turns offline mode on (`"HF_HUB_OFFLINE=1"`), or None when online.

    Read at call time; huggingface_hub's own flag (fixed when it was imported) counts too.
    """
    for name in OFFLINE_ENVS:
        value = os.environ.get(name, "")
        if value.strip().lower() in _TRUE:
            return f"{name}={value}"
    if hf_constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE"
    return None


def is_offline() -> bool:
    return offline_reason() is not None


def refuse_if_offline(what: str, remedy: str) -> None:
    reason = offline_reason()
    if reason is not None:
        raise OfflineError(f"offline mode is on ({reason}), so {what} is not downloaded; {remedy}")


# ---------------------------------------------------------------------------- plain HTTP


class _Interrupted(Exception):
    """A transport failure worth another attempt; the partial file is kept."""


def one_line(error: object) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def transport_reason(error: Exception) -> str:
    if isinstance(error, requests.Timeout):
        return f"no data for {TIMEOUT_S[1]:g} s"
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        return "the connection closed early"
    errno = _ERRNO.search(str(error))  # requests nests urllib3's reason: "[Errno 111] Connection refused"
    return errno[0].strip() if errno else one_line(error)


def new_session(agent: str = USER_AGENT) -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = agent
    return session


def _partial_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".partial")


def _is_html(response: requests.Response) -> bool:
    return response.headers.get("Content-Type", "").split(";")[0].strip().lower() == "text/html"


def read_page(response: requests.Response) -> str:
    """The body of a small HTML answer, read up to MAX_PAGE_BYTES."""
    body = bytearray()
    with contextlib.suppress(requests.RequestException):
        for chunk in response.iter_content(1 << 16):
            body += chunk
            if len(body) > MAX_PAGE_BYTES:
                break
    return body.decode(response.encoding or "utf-8", errors="replace")


def _refuse_web_page(response: requests.Response) -> NoReturn:
    raise DownloadError(f"{response.url} answered with a web page (HTTP {response.status_code}), not a file: "
                        "the address is not a direct download link")


class _Bar:
    """One task of a Rich progress bar, or nothing when `progress` is None."""

    def __init__(self, progress: Progress | None, label: str) -> None:
        self._progress = progress
        self._task = progress.add_task(label, total=None) if progress is not None else None

    def reset(self, total: int | None, completed: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, total=total, completed=completed)

    def advance(self, n: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n)

    def describe(self, text: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=text)


@contextlib.contextmanager
def _progress_bar(enabled: bool, label: str) -> Iterator[_Bar]:
    """A transient bar on stderr (stdout stays for results), gone when the download ends."""
    if not enabled:
        yield _Bar(None, label)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        yield _Bar(progress, label)


def _content_range(response: requests.Response) -> tuple[int | None, int | None]:
    """(first byte, total size) from a Content-Range header; None where absent or '*'."""
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    if match is None:
        return None, None
    start = int(match[1]) if match[1] is not None else None
    total = int(match[3]) if match[3] != "*" else None
    return start, total


def _content_length(response: requests.Response) -> int | None:
    value = response.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


def _open_stream(session: requests.Session, url: str, offset: int,
                 page_handler: Callable[[requests.Response], str], advice: str) -> requests.Response:
    """GET `url` from byte `offset`, following at most three web pages (Drive's confirmation)."""
    headers = {"Accept-Encoding": "identity"}  # byte counts must be the file's, not a compressed stream's
    if offset:
        headers["Range"] = f"bytes={offset}-"
    for _ in range(3):
        try:
            response = session.get(url, headers=headers, stream=True, timeout=TIMEOUT_S)
        except (requests.ConnectionError, requests.Timeout) as error:
            raise _Interrupted(f"cannot reach {urlsplit(url).netloc}: {transport_reason(error)}") from error
        except requests.RequestException as error:
            raise DownloadError(f"cannot request {url}: {one_line(error)}") from error
        if _is_html(response):
            try:
                url = page_handler(response)
            finally:
                response.close()
            continue
        if response.status_code in (200, 206, 416):
            return response
        response.close()
        status = f"HTTP {response.status_code} {response.reason or ''}".strip()
        if response.status_code >= 500 or response.status_code == 408:
            raise _Interrupted(f"{url} answered {status}")
        raise DownloadError(f"{url} answered {status}" + (f"; {advice}" if advice else ""))
    raise DownloadError(f"{url} kept answering with web pages instead of the file"
                        + (f"; {advice}" if advice else ""))


def _transfer(session: requests.Session, url: str, partial: Path, *, expected_size: int | None,
              chunk_size: int, bar: _Bar, page_handler: Callable[[requests.Response], str], advice: str) -> None:
    """Bring `partial` up to the whole file: resume with Range, restart where the server will not."""
    for _ in range(3):  # a fresh start after a 416 or a misplaced range needs one more round
        offset = partial.stat().st_size if partial.exists() else 0
        if expected_size is not None and offset > expected_size:
            partial.unlink()
            offset = 0
        response = _open_stream(session, url, offset, page_handler, advice)
        with contextlib.closing(response):
            if response.status_code == 416:  # nothing left from `offset`: complete already, or a stale partial
                if offset and _content_range(response)[1] == offset:
                    return
                partial.unlink(missing_ok=True)
                continue
            if response.status_code == 206:
                start, total = _content_range(response)
                if start != offset:
                    partial.unlink(missing_ok=True)
                    continue
                mode = "ab"
            else:  # 200: a fresh download, or a server that ignored the Range header: start cleanly
                offset, total, mode = 0, _content_length(response), "wb"
            if expected_size is not None and total is not None and total != expected_size:
                partial.unlink(missing_ok=True)
                raise DownloadError(f"{url} serves {total} bytes, but {expected_size} are expected: "
                                    f"not the recorded file, so nothing was kept; {advice or 'check the source'}")
            bar.reset(total, offset)
            received = offset
            with open(partial, mode) as handle:
                try:
                    for chunk in response.iter_content(chunk_size):
                        handle.write(chunk)
                        received += len(chunk)
                        bar.advance(len(chunk))
                except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                        requests.exceptions.ContentDecodingError) as error:
                    of_total = f" of {total}" if total is not None else ""
                    raise _Interrupted(f"the transfer from {url} broke off after {received}{of_total} bytes "
                                       f"({transport_reason(error)})") from error
            if total is not None and received < total:
                raise _Interrupted(f"the transfer from {url} ended after {received} of {total} bytes")
            return
    raise DownloadError(f"{url} does not answer range requests consistently; delete {partial} and run again")


def _publish(partial: Path, dest: Path, url: str, expected_size: int | None, expected_sha256: str | None,
             bar: _Bar) -> Path:
    size = partial.stat().st_size
    if expected_size is not None and size != expected_size:
        partial.unlink()
        raise DownloadError(f"{url} gave {size} bytes, but {expected_size} are expected; "
                            "the download was deleted: run again to download it afresh")
    if expected_sha256 is not None:
        bar.describe(f"verifying {dest.name}")
        actual = sha256_file(partial)
        if actual != expected_sha256:
            partial.unlink()
            raise DownloadError(f"the file from {url} has sha256 {actual}, but {expected_sha256} is expected; "
                                "the download was deleted: run again, and if it recurs the source serves "
                                "a different file")
    os.replace(partial, dest)
    return dest


def download_file(url: str, dest: Path, *, expected_size: int | None = None, expected_sha256: str | None = None,
                  progress: bool = True, session: requests.Session | None = None, chunk_size: int = 1 << 20,
                  retries: int = DEFAULT_RETRIES, page_handler: Callable[[requests.Response], str] = _refuse_web_page,
                  advice: str = "") -> Path:
    """Download `url` to `dest`, resumable; return `dest`.

    Bytes go to `dest` + ".partial", which a later call (or one of `retries` further
    attempts after a broken connection) continues with a Range request; a server that
    ignores Range or answers 416 is handled by restarting cleanly. Only a complete file
    whose size and sha256 match what is expected is renamed to `dest`; a mismatch deletes
    the partial. Ctrl-C leaves the partial for the next call. Always fetches: callers
    check what they already have first. An HTML answer is refused (not a download link).
    `page_handler` is given an HTML answer and returns the URL to try instead, or raises (drive.py reads
    Drive's pages with it); `advice` ends a failure's message.
    """
    dest = Path(dest)
    partial = _partial_path(dest)
    if expected_sha256 is not None:
        expected_sha256 = expected_sha256.strip().lower()
        if not _SHA256.fullmatch(expected_sha256):
            raise ValueError(f"expected_sha256 must be 64 hexadecimal digits, not {expected_sha256!r}")
    if chunk_size <= 0 or retries < 0:
        raise ValueError("chunk_size must be positive and retries at least 0")
    refuse_if_offline(f"{dest.name} (from {url})", f"unset it to download, or place the file at {dest} yourself")
    dest.parent.mkdir(parents=True, exist_ok=True)
    own_session = session is None
    session = session or new_session()
    try:
        with _progress_bar(progress, dest.name) as bar:
            for attempt in range(retries + 1):
                try:
                    _transfer(session, url, partial, expected_size=expected_size, chunk_size=chunk_size, bar=bar,
                              page_handler=page_handler, advice=advice)
                    break
                except _Interrupted as error:
                    if attempt == retries:
                        kept = partial.stat().st_size if partial.exists() else 0
                        resume = (f"run again to resume from the {kept} bytes kept in {partial}" if kept
                                  else "check the connection and run again")
                        raise DownloadError(f"{error}; {resume}") from error
                    time.sleep(RETRY_BACKOFF_S * 2**attempt)
            return _publish(partial, dest, url, expected_size, expected_sha256, bar)
    finally:
        if own_session:
            session.close()

"""Downloads of weights: the authors' checkpoints from Google Drive, our bundles from the Hub.

Every message says what was fetched from where and what to do next (USER_LESSONS 12).
A large file goes to `<dest>.partial` and resumes there with an HTTP Range request, so
an interrupted or Ctrl-C'd transfer continues where it stopped; nothing appears under
`dest` until its size and sha256 have checked out. With `DOSSR_OFFLINE` or
`HF_HUB_OFFLINE` set, nothing here opens a connection: what is needed and not present
raises `OfflineError`.

Google Drive has no API for anonymous downloads, so two of its web pages are read: the
folder's embedded view (`/embeddedfolderview?id=...`, one `flip-entry` block per item,
the same page gdown reads) for the file ids, and the "can't scan this file for viruses"
page that Drive shows instead of any large file, whose form carries the confirm/uuid
fields that make the next request return the bytes. A quota page ("too many users have
viewed or downloaded this file recently") is reported with the manual route.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import NoReturn
from urllib.parse import parse_qsl, quote, urlencode, urljoin, urlsplit, urlunsplit

import requests
from huggingface_hub import constants as hf_constants
from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import tqdm as hf_tqdm
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

try:  # huggingface_hub 2.x talks through httpx2, 1.x through httpx
    from httpx2 import HTTPError as _HubTransportError
except ImportError:  # pragma: no cover
    from httpx import HTTPError as _HubTransportError  # type: ignore[no-redef]

from dossr_cli.checkpoint.bundle import CONFIG_NAME, BundleError, sha256_file, verify_bundle
from dossr_cli.errors import UsageError, WeightsError

DRIVE_ENDPOINT_ENV = "DOSSR_DRIVE_ENDPOINT"
DRIVE_DOWNLOAD_HOST = "https://drive.usercontent.google.com"
DRIVE_WEB_HOST = "https://drive.google.com"
OFFLINE_ENVS = ("DOSSR_OFFLINE", "HF_HUB_OFFLINE")
HF_BUNDLE_PATTERNS = [CONFIG_NAME, "*.safetensors"]

TIMEOUT_S = (20.0, 60.0)  # (connect, between bytes): a stalled transfer fails and can resume
RETRY_BACKOFF_S = 2.0  # waits 2, 4, 8 s between attempts after a broken transfer
DEFAULT_RETRIES = 3
MAX_PAGE_BYTES = 2 << 20  # an HTML answer larger than this is not one of Drive's pages
USER_AGENT = "dossr (python-requests)"
# the folder view serves its plain listing to browsers; gdown sends a desktop Chrome agent too
BROWSER_AGENT = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                 "Chrome/124.0 Safari/537.36")

_TRUE = {"1", "true", "yes", "on"}
_DRIVE_ID = re.compile(r"[-\w]{10,}")
_DRIVE_FILE_HREF = re.compile(r"/file/d/([-\w]{10,})")
_DRIVE_FOLDER_HREF = re.compile(r"/drive/(?:u/\d+/)?folders/([-\w]{10,})")
_DRIVE_QUOTA = re.compile(r"quota exceeded|too many users have viewed or downloaded", re.IGNORECASE)
_ERRNO = re.compile(r"\[Errno -?\d+\][^'\")\]]+")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")
_HF_SPEC = re.compile(r"hf:([A-Za-z0-9][-\w.]*/[A-Za-z0-9][-\w.]*)(?:@(\S+))?")


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


def _refuse_if_offline(what: str, remedy: str) -> None:
    reason = offline_reason()
    if reason is not None:
        raise OfflineError(f"offline mode is on ({reason}), so {what} is not downloaded; {remedy}")


# ---------------------------------------------------------------------------- plain HTTP


class _Interrupted(Exception):
    """A transport failure worth another attempt; the partial file is kept."""


def _one_line(error: object) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _transport_reason(error: Exception) -> str:
    if isinstance(error, requests.Timeout):
        return f"no data for {TIMEOUT_S[1]:g} s"
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        return "the connection closed early"
    errno = _ERRNO.search(str(error))  # requests nests urllib3's reason: "[Errno 111] Connection refused"
    return errno[0].strip() if errno else _one_line(error)


def _new_session(agent: str = USER_AGENT) -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = agent
    return session


def _partial_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".partial")


def _is_html(response: requests.Response) -> bool:
    return response.headers.get("Content-Type", "").split(";")[0].strip().lower() == "text/html"


def _read_page(response: requests.Response) -> str:
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
            raise _Interrupted(f"cannot reach {urlsplit(url).netloc}: {_transport_reason(error)}") from error
        except requests.RequestException as error:
            raise DownloadError(f"cannot request {url}: {_one_line(error)}") from error
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
                                       f"({_transport_reason(error)})") from error
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


def _download(url: str, dest: Path, *, expected_size: int | None, expected_sha256: str | None, progress: bool,
              session: requests.Session | None, chunk_size: int, retries: int,
              page_handler: Callable[[requests.Response], str], advice: str) -> Path:
    dest = Path(dest)
    partial = _partial_path(dest)
    if expected_sha256 is not None:
        expected_sha256 = expected_sha256.strip().lower()
        if not _SHA256.fullmatch(expected_sha256):
            raise ValueError(f"expected_sha256 must be 64 hexadecimal digits, not {expected_sha256!r}")
    if chunk_size <= 0 or retries < 0:
        raise ValueError("chunk_size must be positive and retries at least 0")
    _refuse_if_offline(f"{dest.name} (from {url})", f"unset it to download, or place the file at {dest} yourself")
    dest.parent.mkdir(parents=True, exist_ok=True)
    own_session = session is None
    session = session or _new_session()
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


def download_file(url: str, dest: Path, *, expected_size: int | None = None, expected_sha256: str | None = None,
                  progress: bool = True, session: requests.Session | None = None, chunk_size: int = 1 << 20,
                  retries: int = DEFAULT_RETRIES) -> Path:
    """Download `url` to `dest`, resumable; return `dest`.

    Bytes go to `dest` + ".partial", which a later call (or one of `retries` further
    attempts after a broken connection) continues with a Range request; a server that
    ignores Range or answers 416 is handled by restarting cleanly. Only a complete file
    whose size and sha256 match what is expected is renamed to `dest`; a mismatch deletes
    the partial. Ctrl-C leaves the partial for the next call. Always fetches: callers
    check what they already have first. An HTML answer is refused (not a download link).
    """
    return _download(url, Path(dest), expected_size=expected_size, expected_sha256=expected_sha256,
                     progress=progress, session=session, chunk_size=chunk_size, retries=retries,
                     page_handler=_refuse_web_page, advice="")


# ---------------------------------------------------------------------------- Google Drive


def _drive_host(default: str) -> str:
    return (os.environ.get(DRIVE_ENDPOINT_ENV, "").strip() or default).rstrip("/")


def _check_drive_id(kind: str, value: str) -> str:
    if not _DRIVE_ID.fullmatch(value):
        raise UsageError(f"{value!r} is not a Google Drive {kind} id (letters, digits, '-' and '_')")
    return value


def drive_folder_url(folder_id: str) -> str:
    """The folder's address for people (always Google's, for messages and manual downloads)."""
    return f"https://drive.google.com/drive/folders/{folder_id}"


def drive_file_url(file_id: str) -> str:
    """The direct-download address of a Drive file (host from DOSSR_DRIVE_ENDPOINT if set)."""
    file_id = _check_drive_id("file", file_id)
    return f"{_drive_host(DRIVE_DOWNLOAD_HOST)}/download?id={quote(file_id)}&export=download"


class _FolderViewParser(HTMLParser):
    """Items of Drive's embedded folder view: `<div class="flip-entry" id="entry-ID">` blocks,
    each with a link (`/file/d/ID/view` or `/drive/folders/ID`) and a `flip-entry-title`."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.items: list[dict[str, str]] = []  # {"id", "kind", "title", "link_text"}
        self._depth = 0
        self._title_depth: int | None = None
        self._in_anchor = False

    def _current(self) -> dict[str, str]:
        if not self.items:
            self.items.append({"id": "", "kind": "", "title": "", "link_text": ""})
        return self.items[-1]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        classes = attributes.get("class", "").split()
        if tag == "div":
            self._depth += 1
            if "flip-entry" in classes:
                entry_id = attributes.get("id", "")
                self.items.append({"id": entry_id.removeprefix("entry-"), "kind": "", "title": "", "link_text": ""})
            elif "flip-entry-title" in classes and self._title_depth is None:
                self._title_depth = self._depth
        elif tag == "a":
            href = attributes.get("href", "")
            file_match, folder_match = _DRIVE_FILE_HREF.search(href), _DRIVE_FOLDER_HREF.search(href)
            if file_match or folder_match:
                item = self._current()
                if item["kind"]:  # a link outside any flip-entry block: an item of its own
                    item = {"id": "", "kind": "", "title": "", "link_text": ""}
                    self.items.append(item)
                item["kind"] = "file" if file_match else "folder"
                item["id"] = (file_match or folder_match)[1]  # type: ignore[index]
                self._in_anchor = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._in_anchor = False
        elif tag == "div":
            if self._title_depth == self._depth:
                self._title_depth = None
            self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self.items:
            if self._title_depth is not None:
                self.items[-1]["title"] += data
            if self._in_anchor:
                self.items[-1]["link_text"] += data


def parse_drive_folder_view(html: str) -> dict[str, str]:
    """File name -> file id from the HTML of Drive's embedded folder view (subfolders left out).

    Where two files share a name, the first listed wins.
    """
    parser = _FolderViewParser()
    parser.feed(html)
    parser.close()
    files: dict[str, str] = {}
    for item in parser.items:
        name = " ".join((item["title"] or item["link_text"]).split())
        if item["kind"] == "file" and name and item["id"]:
            files.setdefault(name, item["id"])
    return files


def list_drive_folder(folder_id: str, session: requests.Session | None = None) -> dict[str, str]:
    """File name -> file id of a public Drive folder, read from its embedded view page."""
    folder_id = _check_drive_id("folder", folder_id)
    human_url = drive_folder_url(folder_id)
    _refuse_if_offline(f"the file list of {human_url}", "unset it to download")
    url = f"{_drive_host(DRIVE_WEB_HOST)}/embeddedfolderview?id={quote(folder_id)}"
    own_session = session is None
    session = session or _new_session(BROWSER_AGENT)
    try:
        try:
            response = session.get(url, timeout=TIMEOUT_S)
        except requests.RequestException as error:
            raise DownloadError(f"cannot read the Drive folder {human_url}: {_transport_reason(error)}; "
                                "check the connection and run again") from error
        with contextlib.closing(response):
            if response.status_code != 200:
                raise DownloadError(f"Google Drive answered HTTP {response.status_code} for the folder {human_url} "
                                    "(it may be private, moved, or rate-limited); open it in a browser to check, "
                                    "and try again later")
            html = response.text
    finally:
        if own_session:
            session.close()
    files = parse_drive_folder_view(html)
    if not files and "flip-entry" not in html:
        raise DownloadError(f"the page for the Drive folder {human_url} holds no file list (the folder may not be "
                            "public, or Google changed the page); download the file by hand in a browser and run "
                            "`dossr weights import FILE`")
    return files


class _ConfirmFormParser(HTMLParser):
    """The `download-form` of Drive's virus-scan warning (its action and hidden fields), the
    `uc-download-link` anchor of the older page, and the caption of an error page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.action: str | None = None
        self.fields: list[tuple[str, str]] = []
        self.link: str | None = None
        self._in_form = False
        self._caption: list[str] = []
        self._in_caption = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form" and attributes.get("id") == "download-form" and self.action is None:
            self.action = attributes.get("action", "")
            self._in_form = True
        elif tag == "input" and self._in_form and attributes.get("type", "").lower() == "hidden":
            if attributes.get("name"):
                self.fields.append((attributes["name"], attributes.get("value", "")))
        elif tag == "a" and attributes.get("id") == "uc-download-link" and attributes.get("href"):
            self.link = attributes["href"]
        elif tag == "p" and "uc-error-subcaption" in attributes.get("class", "").split():
            self._in_caption = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False
        elif tag == "p":
            self._in_caption = False

    def handle_data(self, data: str) -> None:
        if self._in_caption:
            self._caption.append(data)

    @property
    def error_caption(self) -> str:
        return " ".join("".join(self._caption).split())


def _confirmed_url(page_url: str, action: str, fields: list[tuple[str, str]]) -> str:
    target = urlsplit(urljoin(page_url, action))
    if target.scheme not in ("http", "https"):
        raise DownloadError(f"Google Drive's confirmation form at {page_url} points to {action!r}, not a web address")
    query = dict(parse_qsl(target.query, keep_blank_values=True))
    query.update(fields)
    return urlunsplit(target._replace(query=urlencode(query)))


def _drive_page_handler(file_name: str, advice: str) -> Callable[[requests.Response], str]:
    def handle(response: requests.Response) -> str:
        html = _read_page(response)
        form = _ConfirmFormParser()
        form.feed(html)
        form.close()
        if form.action is not None:
            return _confirmed_url(response.url, form.action, form.fields)
        if form.link is not None:
            return _confirmed_url(response.url, form.link, [])
        if _DRIVE_QUOTA.search(html):
            raise DownloadError(f"Google Drive refuses {file_name} for now: its download quota is exceeded (too "
                                f"many downloads in the last 24 hours); {advice}")
        detail = form.error_caption or f"HTTP {response.status_code}, no download link on it"
        raise DownloadError(f"Google Drive answered with a page instead of {file_name} ({detail}); {advice}")

    return handle


def download_from_drive_folder(folder_id: str, file_name: str, dest: Path, *, expected_size: int | None = None,
                               expected_sha256: str | None = None, progress: bool = True,
                               session: requests.Session | None = None, chunk_size: int = 1 << 20,
                               retries: int = DEFAULT_RETRIES) -> Path:
    """Download `file_name` from a public Drive folder to `dest`, resumable (see download_file)."""
    human_url = drive_folder_url(_check_drive_id("folder", folder_id))
    advice = f"try again later, or download {file_name} by hand from {human_url} and run `dossr weights import FILE`"
    _refuse_if_offline(f"{file_name} (from {human_url})",
                       "unset it to download, or download it by hand and run `dossr weights import FILE`")
    own_session = session is None
    session = session or _new_session(BROWSER_AGENT)
    try:
        files = list_drive_folder(folder_id, session=session)
        if file_name not in files:
            there = ", ".join(sorted(files)) or "no files"
            raise DownloadError(f"{file_name} is not in the Drive folder {human_url}; it holds: {there}")
        return _download(drive_file_url(files[file_name]), Path(dest), expected_size=expected_size,
                         expected_sha256=expected_sha256, progress=progress, session=session, chunk_size=chunk_size,
                         retries=retries, page_handler=_drive_page_handler(file_name, advice), advice=advice)
    finally:
        if own_session:
            session.close()


# ---------------------------------------------------------------------------- Hugging Face Hub


def parse_hf_spec(spec: str) -> tuple[str, str | None]:
    """"hf:ORG/REPO@REV" -> ("ORG/REPO", "REV"); "hf:ORG/REPO" -> ("ORG/REPO", None)."""
    match = _HF_SPEC.fullmatch(spec.strip())
    if match is None:
        raise UsageError(f"{spec!r} is not a Hugging Face bundle: expected hf:ORG/REPO or hf:ORG/REPO@REVISION")
    return match[1], match[2]


class _SilentTqdm(hf_tqdm):
    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def _hf_endpoint() -> str:
    """HF_ENDPOINT as it is now (huggingface_hub read its copy when imported)."""
    return (os.environ.get("HF_ENDPOINT", "").strip() or hf_constants.ENDPOINT).rstrip("/")


def _hf_snapshot(repo_id: str, revision: str | None, cache_dir: Path | None, progress: bool, *,
                 local_only: bool, force: bool) -> Path:
    return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, endpoint=_hf_endpoint(),
                                  allow_patterns=HF_BUNDLE_PATTERNS, local_files_only=local_only,
                                  force_download=force, tqdm_class=None if progress else _SilentTqdm))


def _hf_download(where: str, repo_id: str, revision: str | None, cache_dir: Path | None, progress: bool,
                 force: bool) -> Path:
    endpoint = _hf_endpoint()
    try:
        return _hf_snapshot(repo_id, revision, cache_dir, progress, local_only=False, force=force)
    except GatedRepoError as error:
        raise DownloadError(f"{where} is gated on {endpoint}: accept its terms there and log in with "
                            "`hf auth login`") from error
    except RepositoryNotFoundError as error:
        raise DownloadError(f"{where}: no such model repository on {endpoint} (if it is private, log in with "
                            "`hf auth login`)") from error
    except RevisionNotFoundError as error:
        raise DownloadError(f"{where}: the repository has no revision {revision!r}") from error
    except LocalEntryNotFoundError as error:  # the Hub could not be reached and the cache cannot stand in
        reason = f" ({_one_line(error.__cause__)})" if error.__cause__ is not None else ""
        raise DownloadError(f"cannot reach {endpoint} to download {where}{reason}, and it is not in the cache: "
                            "check the connection (or HF_ENDPOINT) and run again") from error
    except HfHubHTTPError as error:
        raise DownloadError(f"{endpoint} refused {where}: {_one_line(error)}") from error
    except (_HubTransportError, OSError) as error:  # transport errors; the size consistency check (OSError)
        raise DownloadError(f"downloading {where} from {endpoint} failed: {_one_line(error)}; run again to "
                            "continue (finished files stay in the cache)") from error


def download_hf_bundle(repo_id: str, revision: str | None = None, *, cache_dir: Path | None = None,
                       progress: bool = True, refresh: bool = False) -> Path:
    """A dossr bundle from the Hugging Face Hub: the local snapshot folder, verified.

    Only `dossr.json` and `*.safetensors` are fetched, through huggingface_hub's cache
    (`cache_dir`, else HF_HUB_CACHE), which skips files it has and honours HF_ENDPOINT.
    A bundle already complete in the cache is returned without any network call (so a
    branch such as `main` is not re-checked; `refresh=True` asks the Hub first). A cached
    copy that fails verification is fetched again, replacing what was cached.
    """
    where = f"hf:{repo_id}" + (f"@{revision}" if revision else "")
    cache_problem: BundleError | None = None
    if not refresh:
        try:
            cached = _hf_snapshot(repo_id, revision, cache_dir, progress, local_only=True, force=False)
        except LocalEntryNotFoundError:
            cached = None
        if cached is not None:
            try:
                verify_bundle(cached, trust_stamp=True)
                return cached
            except BundleError as error:
                cache_problem = error
    cache = Path(cache_dir) if cache_dir is not None else Path(hf_constants.HF_HUB_CACHE)
    if refresh:
        state = "a refresh asks the Hub"
    elif cache_problem is not None:
        state = f"its cached copy fails verification ({cache_problem})"
    else:
        state = f"it is not cached in {cache}"
    _refuse_if_offline(where, f"{state}; unset it to download from {_hf_endpoint()}")
    folder = _hf_download(where, repo_id, revision, cache_dir, progress, force=False)
    try:
        verify_bundle(folder)
        return folder
    except BundleError as error:
        if cache_problem is None:  # freshly downloaded and still wrong: the repository's files disagree
            raise DownloadError(f"the bundle downloaded from {where} ({_hf_endpoint()}) fails verification: {error}; "
                                "run again, and if it recurs the repository's files do not match its "
                                f"{CONFIG_NAME}") from error
    folder = _hf_download(where, repo_id, revision, cache_dir, progress, force=True)
    try:
        verify_bundle(folder)
    except BundleError as error:
        raise DownloadError(f"the bundle downloaded again from {where} ({_hf_endpoint()}) still fails verification: "
                            f"{error}; the repository's files do not match its {CONFIG_NAME}") from error
    return folder


"""The authors' checkpoints from their Google Drive folder, through download.py's transfers.

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
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urljoin, urlsplit, urlunsplit

import requests

from dossr_cli.checkpoint import download
from dossr_cli.checkpoint.download import (
    DEFAULT_RETRIES,
    DownloadError,
    download_file,
    new_session,
    read_page,
    refuse_if_offline,
    transport_reason,
)
from dossr_cli.errors import UsageError

DRIVE_ENDPOINT_ENV = "DOSSR_DRIVE_ENDPOINT"
DRIVE_DOWNLOAD_HOST = "https://drive.usercontent.google.com"
DRIVE_WEB_HOST = "https://drive.google.com"
BROWSER_AGENT = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                 "Chrome/124.0 Safari/537.36")
_DRIVE_ID = re.compile(r"[-\w]{10,}")
_DRIVE_FILE_HREF = re.compile(r"/file/d/([-\w]{10,})")
_DRIVE_FOLDER_HREF = re.compile(r"/drive/(?:u/\d+/)?folders/([-\w]{10,})")
_DRIVE_QUOTA = re.compile(r"quota exceeded|too many users have viewed or downloaded", re.IGNORECASE)


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
    refuse_if_offline(f"the file list of {human_url}", "unset it to download")
    url = f"{_drive_host(DRIVE_WEB_HOST)}/embeddedfolderview?id={quote(folder_id)}"
    own_session = session is None
    session = session or new_session(BROWSER_AGENT)
    try:
        try:
            response = session.get(url, timeout=download.TIMEOUT_S)  # read when called: tests shorten it
        except requests.RequestException as error:
            raise DownloadError(f"cannot read the Drive folder {human_url}: {transport_reason(error)}; "
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
        html = read_page(response)
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
    refuse_if_offline(f"{file_name} (from {human_url})",
                       "unset it to download, or download it by hand and run `dossr weights import FILE`")
    own_session = session is None
    session = session or new_session(BROWSER_AGENT)
    try:
        files = list_drive_folder(folder_id, session=session)
        if file_name not in files:
            there = ", ".join(sorted(files)) or "no files"
            raise DownloadError(f"{file_name} is not in the Drive folder {human_url}; it holds: {there}")
        return download_file(drive_file_url(files[file_name]), Path(dest), expected_size=expected_size,
                             expected_sha256=expected_sha256, progress=progress, session=session,
                             chunk_size=chunk_size, retries=retries, page_handler=_drive_page_handler(file_name, advice),
                             advice=advice)
    finally:
        if own_session:
            session.close()

"""Downloads against local stand-ins for a web server, Google Drive and the Hugging Face Hub.

Every request goes to a server on 127.0.0.1 started by the test (tests/local_http.py);
none leaves the machine.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import pytest
import requests
import torch
from huggingface_hub import constants as hf_constants
from local_http import LocalServer, Reply, Request, bytes_reply

from dossr_cli.checkpoint import download as dl
from dossr_cli.checkpoint.bundle import save_bundle, verify_bundle
from dossr_cli.checkpoint.download import DownloadError, OfflineError, download_file
from dossr_cli.checkpoint.drive import (
    DRIVE_ENDPOINT_ENV,
    download_from_drive_folder,
    drive_file_url,
    list_drive_folder,
    parse_drive_folder_view,
)
from dossr_cli.checkpoint.hub import download_hf_bundle, parse_hf_spec
from dossr_cli.random_weights import random_networks

DATA = random.Random(0).randbytes(3 * 1024 * 1024 + 123)
DATA_SHA = hashlib.sha256(DATA).hexdigest()
CHUNK = 64 * 1024


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short timeouts and retries, no proxies, online, and no real host to fall back to."""
    monkeypatch.setattr(dl, "TIMEOUT_S", (3.0, 5.0))
    monkeypatch.setattr(dl, "RETRY_BACKOFF_S", 0.01)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
                 "DOSSR_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv(DRIVE_ENDPOINT_ENV, "http://127.0.0.1:9")  # the discard port: never Google
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_TOKEN", "")


def gets(server: LocalServer, path: str = "/file") -> list[Request]:
    return [r for r in server.requests if r.method == "GET" and r.path == path]


# ---------------------------------------------------------------------------- download_file


class FileServer:
    """/file serves DATA; the first `cuts` GETs are cut off after `cut_after` bytes."""

    def __init__(self, *, honour_range: bool = True, cut_after: int | None = None, cuts: int = 1) -> None:
        self.honour_range, self.cut_after, self.cuts = honour_range, cut_after, cuts

    def __call__(self, request: Request) -> Reply:
        if request.path != "/file":
            return Reply(404, {"Content-Type": "text/plain"}, b"not found")
        cut = None
        if self.cut_after is not None and self.cuts > 0 and request.method == "GET":
            self.cuts -= 1
            cut = self.cut_after
        return bytes_reply(request, DATA, honour_range=self.honour_range, cut_after=cut)


def test_interrupted_download_resumes_with_a_range_request(tmp_path: Path) -> None:
    dest = tmp_path / "w" / "model.ckpt"
    partial = dest.with_name("model.ckpt.partial")
    with LocalServer(FileServer(cut_after=1_500_000)) as server:
        with pytest.raises(DownloadError, match="resume") as caught:
            download_file(f"{server.url}/file", dest, expected_sha256=DATA_SHA, progress=False, chunk_size=CHUNK,
                          retries=0)
        assert "\n" not in str(caught.value)
        assert not dest.exists()
        kept = partial.stat().st_size
        assert 0 < kept <= 1_500_000 and DATA.startswith(partial.read_bytes())

        assert download_file(f"{server.url}/file", dest, expected_sha256=DATA_SHA, expected_size=len(DATA),
                             progress=False, chunk_size=CHUNK) == dest
        second = gets(server)[1]
        assert second.headers["range"] == f"bytes={kept}-"
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == DATA_SHA
    assert not partial.exists()


def test_broken_transfer_is_retried_within_one_call(tmp_path: Path) -> None:
    dest = tmp_path / "model.ckpt"
    with LocalServer(FileServer(cut_after=700_000, cuts=2)) as server:
        download_file(f"{server.url}/file", dest, expected_sha256=DATA_SHA, progress=False, chunk_size=CHUNK,
                      retries=2)
        ranges = [r.headers.get("range") for r in gets(server)]
    assert len(ranges) == 3 and ranges[0] is None and all(r and r.startswith("bytes=") for r in ranges[1:])
    assert dest.read_bytes() == DATA


def test_server_ignoring_range_restarts_cleanly(tmp_path: Path) -> None:
    dest = tmp_path / "model.ckpt"
    partial = dest.with_name("model.ckpt.partial")
    partial.write_bytes(b"\0" * 1_000_000)  # wrong bytes: appending the full body to them would corrupt the file
    with LocalServer(FileServer(honour_range=False)) as server:
        download_file(f"{server.url}/file", dest, expected_sha256=DATA_SHA, progress=False, chunk_size=CHUNK)
        assert gets(server)[0].headers["range"] == "bytes=1000000-"
    assert dest.read_bytes() == DATA and not partial.exists()


def test_complete_partial_answered_416_is_verified_and_kept(tmp_path: Path) -> None:
    dest = tmp_path / "model.ckpt"
    dest.with_name("model.ckpt.partial").write_bytes(DATA)
    with LocalServer(FileServer()) as server:
        download_file(f"{server.url}/file", dest, expected_sha256=DATA_SHA, progress=False)
        assert len(gets(server)) == 1
    assert dest.read_bytes() == DATA


def test_partial_longer_than_the_file_starts_over(tmp_path: Path) -> None:
    dest = tmp_path / "model.ckpt"
    dest.with_name("model.ckpt.partial").write_bytes(DATA + b"extra")
    with LocalServer(FileServer()) as server:
        download_file(f"{server.url}/file", dest, expected_sha256=DATA_SHA, progress=False)
        assert [r.headers.get("range") for r in gets(server)] == [f"bytes={len(DATA) + 5}-", None]
    assert dest.read_bytes() == DATA


def test_wrong_sha256_deletes_the_download(tmp_path: Path) -> None:
    dest = tmp_path / "model.ckpt"
    wrong = "0" * 64
    with LocalServer(FileServer()) as server, pytest.raises(DownloadError) as caught:
        download_file(f"{server.url}/file", dest, expected_sha256=wrong, progress=False)
    assert DATA_SHA in str(caught.value) and wrong in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_wrong_size_deletes_the_download_before_transferring(tmp_path: Path) -> None:
    dest = tmp_path / "model.ckpt"
    dest.with_name("model.ckpt.partial").write_bytes(DATA[:1000])
    with LocalServer(FileServer()) as server, pytest.raises(DownloadError, match=f"{len(DATA)} bytes.*12345"):
        download_file(f"{server.url}/file", dest, expected_size=12345, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_keeps_the_partial_and_writes_nothing_at_dest(tmp_path: Path) -> None:
    class InterruptingSession(requests.Session):
        def get(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            response = super().get(*args, **kwargs)
            chunks = response.iter_content

            def iter_content(chunk_size: int = 1):  # type: ignore[no-untyped-def]
                for number, chunk in enumerate(chunks(chunk_size)):
                    if number == 3:
                        raise KeyboardInterrupt
                    yield chunk

            response.iter_content = iter_content  # type: ignore[method-assign]
            return response

    dest = tmp_path / "model.ckpt"
    with LocalServer(FileServer()) as server:
        with InterruptingSession() as session, pytest.raises(KeyboardInterrupt):
            download_file(f"{server.url}/file", dest, progress=False, session=session, chunk_size=CHUNK)
        assert not dest.exists()
        assert dest.with_name("model.ckpt.partial").stat().st_size == 3 * CHUNK
        download_file(f"{server.url}/file", dest, expected_sha256=DATA_SHA, progress=False)
        assert gets(server)[-1].headers["range"] == f"bytes={3 * CHUNK}-"


def test_progress_goes_to_stderr_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with LocalServer(FileServer()) as server:
        download_file(f"{server.url}/file", tmp_path / "model.ckpt", expected_sha256=DATA_SHA, progress=True)
    assert capsys.readouterr().out == ""


def test_http_errors_and_web_pages_are_refused(tmp_path: Path) -> None:
    def handler(request: Request) -> Reply:
        if request.path == "/page":
            return Reply(200, {"Content-Type": "text/html; charset=utf-8"}, b"<html>sign in</html>")
        return Reply(404, {"Content-Type": "text/plain"}, b"no")

    with LocalServer(handler) as server:
        with pytest.raises(DownloadError, match=r"/missing answered HTTP 404"):
            download_file(f"{server.url}/missing", tmp_path / "a.ckpt", progress=False)
        with pytest.raises(DownloadError, match="web page"):
            download_file(f"{server.url}/page", tmp_path / "a.ckpt", progress=False)
    assert not (tmp_path / "a.ckpt").exists()


@pytest.mark.parametrize("variable", ["DOSSR_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_mode_opens_no_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, "1")
    with LocalServer(FileServer()) as server:
        with pytest.raises(OfflineError, match=variable):
            download_file(f"{server.url}/file", tmp_path / "a.ckpt", progress=False)
        with pytest.raises(OfflineError):
            download_from_drive_folder("folder_id_0123456789", "a.ckpt", tmp_path / "a.ckpt", progress=False)
        assert server.requests == []


# ---------------------------------------------------------------------------- Google Drive

FOLDER_ID = "1BTGRbAqXDSNWjyUnTLgDfmjd2xyu8GvP"
SUBFOLDER_ID = "1SubFolderSubFolderSubFolder0"
FILE_IDS = {"dossr_default.ckpt": "1DefaultDefaultDefaultDefault0",
            "dossr_onestep.ckpt": "1OneStepOneStepOneStepOne_-0"}
UUID = "8a3c1f0e-5b7d-4e2a-9c61-0d2f4b8e7a15"


def folder_view_html(entries: dict[str, str]) -> str:
    """The shape of drive.google.com/embeddedfolderview?id=...: one flip-entry block per item."""
    def entry(item_id: str, name: str, href: str, icon: str) -> str:
        return (f'<div class="flip-entry" id="entry-{item_id}" tabindex="0" role="link">'
                f'<div class="flip-entry-info"><a href="{href}" target="_blank">'
                f'<div class="flip-entry-thumb"><div class="flip-entry-list-icon"><img src="{icon}" alt="Unknown">'
                f'</div></div><div class="flip-entry-title">{name}</div></a></div>'
                f'<div class="flip-entry-last-modified"><div>Oct 1, 2024</div></div></div>')

    blocks = [entry(SUBFOLDER_ID, "samples", f"https://drive.google.com/drive/folders/{SUBFOLDER_ID}",
                    "https://drive-thirdparty.googleusercontent.com/16/type/application/vnd.google-apps.folder")]
    blocks += [entry(file_id, name.replace("&", "&amp;"), f"https://drive.google.com/file/d/{file_id}/view?usp=drive_web",
                     "https://drive-thirdparty.googleusercontent.com/16/type/application/octet-stream")
               for name, file_id in entries.items()]
    return ('<!DOCTYPE html><html><head><meta charset="utf-8"><title>DoSSR</title>'
            '<link rel="stylesheet" href="https://ssl.gstatic.com/docs/doclist/embeddedfolderview/css/ef.css">'
            '</head><body><div class="flip-entries"><div class="flip-entries-list">'
            + "".join(blocks) + '</div></div><a href="https://drive.google.com/drive/my-drive">Drive</a></body></html>')


def virus_scan_html(base: str, file_id: str, name: str) -> str:
    return ('<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>'
            '<meta http-equiv="content-type" content="text/html; charset=utf-8"/></head><body>'
            '<div class="uc-main"><div id="uc-text"><p class="uc-warning-caption">Google Drive can&#39;t scan this '
            f'file for viruses.</p><p class="uc-warning-subcaption"><span class="uc-name-size"><a href="/open?id='
            f'{file_id}">{name}</a> (6.4G)</span> is too large for Google to scan for viruses. Would you still like '
            f'to download this file?</p><form id="download-form" action="{base}/download" method="get">'
            '<input type="submit" id="uc-download-link" class="goog-inline-block jfk-button jfk-button-action" '
            f'value="Download anyway"/><input type="hidden" name="id" value="{file_id}">'
            '<input type="hidden" name="export" value="download"><input type="hidden" name="confirm" value="t">'
            f'<input type="hidden" name="uuid" value="{UUID}"></form></div></div></body></html>')


QUOTA_HTML = ('<html><head><title>Google Drive - Quota exceeded</title></head><body><div class="uc-main">'
              '<div id="uc-text"><p class="uc-error-caption">Sorry, you can&#39;t view or download this file at this '
              'time.</p><p class="uc-error-subcaption">Too many users have viewed or downloaded this file recently. '
              'Please try accessing the file again later. If the file you are trying to access is particularly large '
              'or is shared with many people, it may take up to 24 hours to be able to view or download the file.'
              '</p></div></div></body></html>')


class FakeDrive:
    """The folder view, and /download answering with the virus-scan form until confirm and uuid come back."""

    def __init__(self, base_holder: list[str], *, quota: bool = False, cut_after: int | None = None,
                 listing: str | None = None, old_page: bool = False) -> None:
        self.base_holder, self.quota, self.cut_after, self.listing = base_holder, quota, cut_after, listing
        self.old_page = old_page

    def __call__(self, request: Request) -> Reply:
        html = {"Content-Type": "text/html; charset=utf-8"}
        if request.path == "/embeddedfolderview" and request.query.get("id") == FOLDER_ID:
            return Reply(200, html, (self.listing or folder_view_html(FILE_IDS)).encode())
        if request.path == "/download" and request.query.get("id") in FILE_IDS.values():
            file_id = request.query["id"]
            if self.quota:
                return Reply(403, html, QUOTA_HTML.encode())
            if self.old_page and request.query.get("confirm") != "Ab1c":  # the page before 2024: a link, no form
                link = f"/download?export=download&amp;confirm=Ab1c&amp;id={file_id}"
                return Reply(200, html, f'<html><body><a id="uc-download-link" href="{link}">Download anyway</a>'
                                        '</body></html>'.encode())
            if not self.old_page and (request.query.get("confirm") != "t" or request.query.get("uuid") != UUID):
                return Reply(200, html, virus_scan_html(self.base_holder[0], file_id, "dossr_default.ckpt").encode())
            cut, self.cut_after = self.cut_after, None
            return bytes_reply(request, DATA, cut_after=cut, headers={
                "Content-Disposition": 'attachment; filename="dossr_default.ckpt"'})
        return Reply(404, html, b"<html><title>Not Found</title></html>")


@pytest.fixture
def drive(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    def start(**options) -> LocalServer:  # type: ignore[no-untyped-def]
        base: list[str] = []
        server = LocalServer(FakeDrive(base, **options))
        base.append(server.url)
        monkeypatch.setenv(DRIVE_ENDPOINT_ENV, server.url)
        servers.append(server.__enter__())
        return server

    servers: list[LocalServer] = []
    yield start
    for server in servers:
        server.__exit__(None, None, None)


def test_drive_file_url_uses_the_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DRIVE_ENDPOINT_ENV)
    assert drive_file_url("1AbCdEfGhIjKlMn") == "https://drive.usercontent.google.com/download?id=1AbCdEfGhIjKlMn&export=download"
    monkeypatch.setenv(DRIVE_ENDPOINT_ENV, "http://127.0.0.1:1234/")
    assert drive_file_url("1AbCdEfGhIjKlMn").startswith("http://127.0.0.1:1234/download?id=1AbCdEfGhIjKlMn")
    with pytest.raises(ValueError, match="Drive file id"):
        drive_file_url("../x")


def test_folder_view_parsing_lists_files_only() -> None:
    names = dict(FILE_IDS, **{"notes & more.txt": "1NotesNotesNotesNotes"})
    assert parse_drive_folder_view(folder_view_html(names)) == names


def test_list_drive_folder(drive) -> None:  # type: ignore[no-untyped-def]
    server = drive()
    assert list_drive_folder(FOLDER_ID) == FILE_IDS
    assert [(r.path, r.query) for r in server.requests] == [("/embeddedfolderview", {"id": FOLDER_ID})]


def test_drive_download_follows_the_virus_scan_form(drive, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = drive()
    dest = tmp_path / "dossr_default.ckpt"
    download_from_drive_folder(FOLDER_ID, "dossr_default.ckpt", dest, expected_sha256=DATA_SHA, progress=False)
    assert dest.read_bytes() == DATA
    downloads = [r.query for r in server.requests if r.path == "/download"]
    assert downloads == [{"id": FILE_IDS["dossr_default.ckpt"], "export": "download"},
                         {"id": FILE_IDS["dossr_default.ckpt"], "export": "download", "confirm": "t", "uuid": UUID}]


def test_drive_download_follows_the_older_confirmation_link(drive, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = drive(old_page=True)
    dest = tmp_path / "dossr_onestep.ckpt"
    download_from_drive_folder(FOLDER_ID, "dossr_onestep.ckpt", dest, expected_sha256=DATA_SHA, progress=False)
    assert dest.read_bytes() == DATA
    assert [r.query.get("confirm") for r in server.requests if r.path == "/download"] == [None, "Ab1c"]


def test_drive_download_resumes_through_the_form(drive, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = drive(cut_after=1_000_000)
    dest = tmp_path / "dossr_default.ckpt"
    with pytest.raises(DownloadError, match="resume"):
        download_from_drive_folder(FOLDER_ID, "dossr_default.ckpt", dest, progress=False, chunk_size=CHUNK,
                                   retries=0)
    kept = dest.with_name("dossr_default.ckpt.partial").stat().st_size
    assert kept > 0
    download_from_drive_folder(FOLDER_ID, "dossr_default.ckpt", dest, expected_size=len(DATA),
                               expected_sha256=DATA_SHA, progress=False)
    confirmed = [r for r in server.requests if r.path == "/download" and r.query.get("uuid") == UUID]
    assert confirmed[-1].headers["range"] == f"bytes={kept}-"
    assert dest.read_bytes() == DATA


def test_drive_quota_page_gives_the_manual_route(drive, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    drive(quota=True)
    dest = tmp_path / "dossr_default.ckpt"
    with pytest.raises(DownloadError) as caught:
        download_from_drive_folder(FOLDER_ID, "dossr_default.ckpt", dest, progress=False)
    message = str(caught.value)
    assert "quota" in message and "dossr weights import" in message
    assert f"https://drive.google.com/drive/folders/{FOLDER_ID}" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_drive_missing_file_names_what_is_there(drive, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    drive()
    with pytest.raises(DownloadError, match="dossr_default.ckpt, dossr_onestep.ckpt"):
        download_from_drive_folder(FOLDER_ID, "dossr_v2.ckpt", tmp_path / "x.ckpt", progress=False)


def test_drive_unreadable_folder_page(drive, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    drive(listing="<html><head><title>Sign in</title></head><body>Sign in to continue</body></html>")
    with pytest.raises(DownloadError, match="no file list"):
        list_drive_folder(FOLDER_ID)
    with pytest.raises(DownloadError, match="HTTP 404.*private"):
        list_drive_folder("1UnknownUnknownUnknown")


# ---------------------------------------------------------------------------- Hugging Face Hub

REPO = "dossr-test/tiny-bundle"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def bundle_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = save_bundle(random_networks(seed=0), tmp_path_factory.mktemp("bundle") / "tiny", dtype=torch.float16)
    files = {path.name: path.read_bytes() for path in sorted(folder.iterdir())}
    files["README.md"] = b"# not part of a bundle: must not be downloaded\n"
    return files


class FakeHub:
    """Enough of the Hub's HTTP API for huggingface_hub 2.x's snapshot_download over plain HTTP."""

    def __init__(self, files: dict[str, bytes], *, cut: dict[str, int] | None = None) -> None:
        self.files, self.cut = files, dict(cut or {})

    def __call__(self, request: Request) -> Reply:
        json_headers = {"Content-Type": "application/json"}
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)", request.path)
        if match and request.method == "GET":
            repo, kind, revision = match.groups()
            if repo != REPO:
                return Reply(404, {**json_headers, "X-Error-Code": "RepoNotFound"}, b'{"error":"Repository not found"}')
            if revision not in ("main", COMMIT):
                return Reply(404, {**json_headers, "X-Error-Code": "RevisionNotFound"}, b'{"error":"Invalid rev"}')
            if kind == "revision":
                info = {"id": REPO, "modelId": REPO, "sha": COMMIT, "private": False,
                        "siblings": [{"rfilename": name} for name in self.files]}
                return Reply(200, json_headers, json.dumps(info).encode())
            tree = [{"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest(),
                     **({"lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}}
                        if name.endswith(".safetensors") else {})}
                    for name, data in self.files.items()]
            return Reply(200, json_headers, json.dumps(tree).encode())
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", request.path)
        if match and match[1] == REPO and match[2] in ("main", COMMIT) and match[3] in self.files:
            data = self.files[match[3]]
            headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": COMMIT}
            cut = self.cut.pop(match[3], None) if request.method == "GET" else None
            return bytes_reply(request, data, headers=headers, cut_after=cut)
        return Reply(404, {**json_headers, "X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT},
                     b'{"error":"Entry not found"}')


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, bundle_files: dict[str, bytes]):  # type: ignore[no-untyped-def]
    def start(files: dict[str, bytes] | None = None, **options) -> LocalServer:  # type: ignore[no-untyped-def]
        server = LocalServer(FakeHub(dict(files or bundle_files), **options)).__enter__()
        servers.append(server)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        return server

    servers: list[LocalServer] = []
    yield start
    for server in servers:
        server.__exit__(None, None, None)


@pytest.mark.parametrize(("spec", "parsed"), [
    ("hf:dossr/bundle-fp16", ("dossr/bundle-fp16", None)),
    ("hf:dossr/bundle.v1@main", ("dossr/bundle.v1", "main")),
    ("hf:Org_1/repo@refs/pr/3", ("Org_1/repo", "refs/pr/3")),
    ("hf:dossr/b@" + COMMIT, ("dossr/b", COMMIT)),
])
def test_parse_hf_spec(spec: str, parsed: tuple[str, str | None]) -> None:
    assert parse_hf_spec(spec) == parsed


@pytest.mark.parametrize("spec", ["dossr/bundle", "hf:bundle", "hf:a/b/c", "hf:a/b@", "hf:/b", "gh:a/b"])
def test_parse_hf_spec_rejects(spec: str) -> None:
    with pytest.raises(ValueError, match="hf:ORG/REPO@REVISION"):
        parse_hf_spec(spec)


def test_hf_bundle_downloads_and_verifies(hub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    server = hub()
    folder = download_hf_bundle(REPO, cache_dir=tmp_path, progress=True)
    assert capsys.readouterr().out == ""
    verify_bundle(folder)
    assert folder.name == COMMIT and folder.is_relative_to(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == sorted(n for n in server.handler.files if n != "README.md")
    assert not any("README" in r.path for r in server.requests)
    assert server.errors == []


def test_hf_cached_bundle_makes_no_request(hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = hub()
    first = download_hf_bundle(REPO, cache_dir=tmp_path, progress=False)
    server.clear()
    assert download_hf_bundle(REPO, cache_dir=tmp_path, progress=False) == first
    assert download_hf_bundle(REPO, COMMIT, cache_dir=tmp_path, progress=False) == first
    assert server.requests == []


def test_hf_offline_uses_the_cache_or_refuses(hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    server = hub()
    folder = download_hf_bundle(REPO, cache_dir=tmp_path / "filled", progress=False)
    server.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    assert download_hf_bundle(REPO, cache_dir=tmp_path / "filled", progress=False) == folder
    with pytest.raises(OfflineError, match="HF_HUB_OFFLINE.*not cached"):
        download_hf_bundle(REPO, cache_dir=tmp_path / "empty", progress=False)
    assert server.requests == []


def test_hf_transfer_cut_in_the_middle_resumes(hub, tmp_path: Path, bundle_files: dict[str, bytes],  # type: ignore[no-untyped-def]
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 256 * 1024)  # it resumes from the last whole chunk
    biggest = max((n for n in bundle_files if n.endswith(".safetensors")), key=lambda n: len(bundle_files[n]))
    cut = len(bundle_files[biggest]) // 2
    server = hub(cut={biggest: cut})
    folder = download_hf_bundle(REPO, cache_dir=tmp_path, progress=False)
    verify_bundle(folder)
    fetches = [r for r in server.requests if r.method == "GET" and r.path.endswith("/" + biggest)]
    assert len(fetches) == 2 and "range" not in fetches[0].headers
    assert 0 < int(re.fullmatch(r"bytes=(\d+)-", fetches[1].headers["range"])[1]) <= cut  # type: ignore[index]


def test_hf_tampered_file_is_reported(hub, tmp_path: Path, bundle_files: dict[str, bytes]) -> None:  # type: ignore[no-untyped-def]
    tampered = dict(bundle_files)
    data = bytearray(tampered["vae.safetensors"])
    data[-1] ^= 0xFF
    tampered["vae.safetensors"] = bytes(data)
    hub(tampered)
    with pytest.raises(DownloadError, match=r"hf:dossr-test/tiny-bundle .*fails verification.*vae\.safetensors"):
        download_hf_bundle(REPO, cache_dir=tmp_path, progress=False)


def test_hf_corrupt_cache_is_fetched_again(hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = hub()
    folder = download_hf_bundle(REPO, cache_dir=tmp_path, progress=False)
    with open((folder / "vae.safetensors").resolve(), "r+b") as handle:  # the blob behind the snapshot's link
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 0xFF]))
    server.clear()
    assert download_hf_bundle(REPO, cache_dir=tmp_path, progress=False) == folder
    verify_bundle(folder)
    assert any(r.path.endswith("/vae.safetensors") and r.method == "GET" for r in server.requests)


def test_hf_errors_name_the_repository(hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    hub()
    with pytest.raises(DownloadError, match="hf:dossr-test/nothing: no such model repository"):
        download_hf_bundle("dossr-test/nothing", cache_dir=tmp_path, progress=False)
    with pytest.raises(DownloadError, match="no revision 'v9'"):
        download_hf_bundle(REPO, "v9", cache_dir=tmp_path, progress=False)


def test_hf_repository_without_a_bundle(hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    hub({"README.md": b"hello\n"})
    with pytest.raises(DownloadError, match="not a dossr weight bundle"):
        download_hf_bundle(REPO, cache_dir=tmp_path, progress=False)


def test_unreachable_hosts_fail_with_one_line(tmp_path: Path) -> None:
    """The autouse fixture points Drive and the Hub at 127.0.0.1:9, where nothing listens."""
    with pytest.raises(DownloadError, match=r"cannot reach 127\.0\.0\.1:9.*check the connection") as caught:
        download_file("http://127.0.0.1:9/file", tmp_path / "a.ckpt", progress=False, retries=1)
    with pytest.raises(DownloadError, match="cannot read the Drive folder https://drive.google.com/drive/folders/"):
        list_drive_folder(FOLDER_ID)
    with pytest.raises(DownloadError, match=r"cannot reach http://127\.0\.0\.1:9 to download hf:a/b.*not in the cache"):
        download_hf_bundle("a/b", cache_dir=tmp_path, progress=False)
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == [] or all(p.is_dir() for p in tmp_path.iterdir())


def test_hf_refresh_asks_the_hub_again(hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = hub()
    folder = download_hf_bundle(REPO, cache_dir=tmp_path, progress=False)
    server.clear()
    assert download_hf_bundle(REPO, cache_dir=tmp_path, progress=False, refresh=True) == folder
    assert any(r.path.startswith("/api/models/") for r in server.requests)
    assert not any(r.method == "GET" and "/resolve/" in r.path for r in server.requests)  # nothing re-downloaded


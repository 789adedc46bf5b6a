"""Where weights come from: resolution order, the cache, and one command from nothing to ready weights.

The authors' Drive folder is stood in for by a server on 127.0.0.1 that serves a tiny
checkpoint in their layout under the real file name; the real download client runs.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout

import pytest
import torch
from authors_reference import authors_state_dict
from local_http import LocalServer, Reply, Request, bytes_reply
from test_download import folder_view_html

from dossr_cli.checkpoint import store
from dossr_cli.checkpoint.bundle import CONFIG_NAME, load_bundle
from dossr_cli.checkpoint.drive import DRIVE_ENDPOINT_ENV
from dossr_cli.cli.app import main
from dossr_cli.errors import WeightsError

FOLDER_ID = store.manifest()["default"].source["folder_id"]
FILE_ID = "1TinyDefaultCheckpointForTests0"


@pytest.fixture(scope="module")
def tiny_ckpt_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("ckpt") / "dossr_default.ckpt"
    torch.save(authors_state_dict("tinyb"), path)
    return path.read_bytes()


@pytest.fixture
def fake_drive(monkeypatch, tiny_ckpt_bytes):
    payload = {"data": tiny_ckpt_bytes}

    def handler(request: Request) -> Reply:
        if request.path == "/embeddedfolderview" and request.query.get("id") == FOLDER_ID:
            return Reply(200, {"Content-Type": "text/html"}, folder_view_html({"dossr_default.ckpt": FILE_ID}).encode())
        if request.path == "/download" and request.query.get("id") == FILE_ID:
            return bytes_reply(request, payload["data"])
        return Reply(404, {"Content-Type": "text/html"}, b"<html>not found</html>")

    with LocalServer(handler) as server:
        monkeypatch.setenv(DRIVE_ENDPOINT_ENV, server.url)
        monkeypatch.delenv("DOSSR_HF_REPO", raising=False)
        server.payload = payload
        yield server


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as done:
            return int(done.code or 0), out.getvalue(), err.getvalue()
    raise AssertionError("main() always exits")


def test_explicit_bundle_folder_wins(tmp_path, tiny_ckpt_bytes):
    ckpt = tmp_path / "a.ckpt"
    ckpt.write_bytes(tiny_ckpt_bytes)
    bundle = store.import_into_cache(ckpt)
    assert store.resolve_weights(str(bundle)) == bundle


def test_a_checkpoint_file_is_imported_once_keyed_by_content(tmp_path, tiny_ckpt_bytes, monkeypatch):
    ckpt = tmp_path / "mine.ckpt"
    ckpt.write_bytes(tiny_ckpt_bytes)
    first = store.resolve_weights(str(ckpt))
    assert first.parent == store.weights_dir() and (first / CONFIG_NAME).is_file()
    stamp = (first / CONFIG_NAME).stat().st_mtime_ns

    def no_second_import(*args, **kwargs):
        raise AssertionError("imported twice")

    monkeypatch.setattr("dossr_cli.checkpoint.importer.import_checkpoint", no_second_import)
    copy = tmp_path / "renamed.ckpt"
    copy.write_bytes(tiny_ckpt_bytes)
    assert store.resolve_weights(str(copy)) == first  # same content, same bundle
    assert (first / CONFIG_NAME).stat().st_mtime_ns == stamp


def test_dossr_weights_is_used_when_no_option_is_given(tmp_path, tiny_ckpt_bytes, monkeypatch):
    ckpt = tmp_path / "env.ckpt"
    ckpt.write_bytes(tiny_ckpt_bytes)
    monkeypatch.setenv("DOSSR_WEIGHTS", str(ckpt))
    bundle = store.resolve_weights(None)
    assert store.resolve_weights(str(bundle)) == bundle
    assert bundle == store.imported_bundle_path(ckpt)


def test_unknown_and_missing_names_explain_what_to_do(monkeypatch):
    with pytest.raises(store.WeightsNotFoundError, match="known: default, onestep"):
        store.resolve_weights("nonesuch")
    with pytest.raises(store.WeightsNotFoundError) as missing:
        store.resolve_weights("default", confirm=lambda question: False)
    text = str(missing.value)
    assert "dossr weights download default" in text
    assert "drive.google.com/drive/folders/" + FOLDER_ID in text
    assert "dossr weights import dossr_default.ckpt --name default" in text
    with pytest.raises(store.WeightsNotFoundError, match="no such file"):
        store.resolve_weights("./missing/file.ckpt")


def test_from_nothing_to_ready_weights_in_one_command(fake_drive, tmp_path):
    code, out, err = run_cli("weights", "download", "default")
    assert code == 0, err
    bundle = store.weights_dir() / "default"
    assert out.strip() == str(bundle)
    assert (bundle / CONFIG_NAME).is_file()
    assert not list((store.cache_root() / "downloads").glob("*"))  # the big pickle is not kept
    load_bundle(bundle)
    assert store.resolve_weights(None) == bundle  # and it is what a plain `dossr upscale` uses
    recorded = json.loads(store.known_hashes_path().read_text())
    assert set(recorded) == {"dossr_default.ckpt"}

    code, out, _ = run_cli("weights", "list", "--json")
    rows = {row["name"]: row for row in map(json.loads, out.splitlines())}
    assert rows["default"]["installed"] and not rows["onestep"]["installed"]
    assert run_cli("weights", "verify", "default")[0] == 0
    assert run_cli("weights", "path", "default")[1].strip() == str(bundle)
    info = json.loads(run_cli("weights", "info", "default")[1])
    assert info["source"]["file"] == "dossr_default.ckpt" and info["bytes"] > 0
    assert run_cli("weights", "rm", "default")[0] == 0
    assert not bundle.exists()


def test_a_later_download_must_match_the_first_ones_sha256(fake_drive, tiny_ckpt_bytes):
    store.download_named("default")
    store.remove_bundle("default")
    fake_drive.payload["data"] = tiny_ckpt_bytes[:-1] + bytes([tiny_ckpt_bytes[-1] ^ 1])
    with pytest.raises(WeightsError, match="differs from the copy downloaded before"):
        store.download_named("default")
    assert "default" not in store.installed_bundles()


def test_download_when_asked_at_a_terminal_and_offline_mode(fake_drive, monkeypatch):
    questions = []
    bundle = store.resolve_weights("default", confirm=lambda q: questions.append(q) or True)
    assert "dossr_default.ckpt from the authors' Google Drive folder" in questions[0] and "GB" in questions[0]
    assert bundle == store.weights_dir() / "default"
    store.remove_bundle("default")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fake_drive.clear()
    with pytest.raises(WeightsError, match="offline|OFFLINE"):
        store.download_named("default")
    assert fake_drive.requests == []


def test_cli_import_with_out_folder_then_use_it(tmp_path, tiny_ckpt_bytes):
    ckpt = tmp_path / "dossr_default.ckpt"
    ckpt.write_bytes(tiny_ckpt_bytes)
    out = tmp_path / "my-bundle"
    code, stdout, err = run_cli("weights", "import", str(ckpt), "--out", str(out), "--dtype", "fp16")
    assert code == 0, err
    assert stdout.strip() == str(out)
    assert load_bundle(out).unet.conv_in.weight.dtype == torch.float16
    code, _, err = run_cli("weights", "import", str(ckpt), "--out", str(out))
    assert code == 2 and "already exists" in err
    code, _, err = run_cli("weights", "import", str(ckpt), "--dtype", "fp8")
    assert code == 2 and "--dtype" in err


def test_cli_import_refuses_a_bad_file_with_one_line(tmp_path):
    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    code, out, err = run_cli("weights", "import", str(bad), "--out", str(tmp_path / "o"))
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err and "broken.ckpt" in err
    assert not (tmp_path / "o").exists() and out == ""

"""`dossr batch`: a tree of images, its options, and re-runs against the journal (in process)."""

from __future__ import annotations

import contextlib
import json
import sqlite3

import numpy as np
import pytest

from dossr_cli.batch.journal import JOURNAL_NAME
from dossr_cli.cli import common

from .helpers import batch_summary, decode, files_in, save, smooth_image


@pytest.fixture
def tree(tmp_path):
    """in/ with two images, a subfolder with one more and a broken file, and files that are not inputs."""
    root = tmp_path / "in"
    save(smooth_image(16, 16, "a"), root / "a.png")
    save(smooth_image(16, 24, "b"), root / "b.jpg", quality=95)
    save(smooth_image(16, 16, "c"), root / "sub" / "c.png")
    whole = save(smooth_image(48, 48, "broken"), root / "sub" / "broken.png").read_bytes()
    (root / "sub" / "broken.png").write_bytes(whole[: len(whole) // 2])
    (root / "notes.txt").write_text("not an image")
    save(smooth_image(16, 16, "h"), root / ".hidden.png")
    return root


BROUGHT_DOWN_TWO = ("brought down 2 runs (killed or out of memory while processing it); run it alone with "
                    "--debug or raise limits")

def outputs(folder):
    return {name for name in files_in(folder) if not name.startswith(".dossr-journal")}


def json_lines(result):
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


def statuses(result):
    return {record["input"].rsplit("/in/", 1)[1]: record["status"] for record in json_lines(result)}


def journal_rows(outdir):
    with contextlib.closing(sqlite3.connect(outdir / JOURNAL_NAME)) as db:
        return dict(db.execute("SELECT input, status FROM jobs").fetchall())


def test_tree_with_a_broken_file(dossr, tree, tmp_path):
    out = tmp_path / "out"
    result = dossr("batch", tree, "-o", out, "-r")
    assert result.code == 1 and "Traceback" not in result.stderr
    assert result.error_lines == [line for line in result.error_lines if "sub/broken.png" in line]
    assert len(result.error_lines) == 1 and "truncated or corrupt" in result.error_lines[0]
    assert batch_summary(result.stderr) == {"done": 3, "skipped": 0, "failed": 1}
    assert "failed: sub/broken.png:" in result.stderr
    assert outputs(out) == {"a_x4.png", "b_x4.jpg", "sub/c_x4.png"}  # the tree mirrored, the broken one absent
    assert decode(out / "a_x4.png").size == (64, 64)
    assert decode(out / "b_x4.jpg").size == (96, 64)
    assert decode(out / "sub" / "c_x4.png").size == (64, 64)
    assert journal_rows(out) == {"a.png": "done", "b.jpg": "done", "sub/c.png": "done", "sub/broken.png": "failed"}


def test_without_r_subfolders_are_left_alone(dossr, tree, tmp_path):
    result = dossr("batch", tree, "-o", tmp_path / "out")
    assert result.code == 0, result.stderr
    assert outputs(tmp_path / "out") == {"a_x4.png", "b_x4.jpg"}


@pytest.mark.parametrize(("options", "expected"), [
    (["--include", "*.png", "--exclude", "broken.png"], {"a_x4.png", "sub/c_x4.png"}),
    (["--include", "sub/*", "--exclude", "*broken*"], {"sub/c_x4.png"}),
    (["--exclude", "sub/*"], {"a_x4.png", "b_x4.jpg"}),
    (["--exclude", "*.jpg", "--exclude", "broken.png"], {"a_x4.png", "sub/c_x4.png"}),
])
def test_include_and_exclude(dossr, tree, tmp_path, options, expected):
    result = dossr("batch", tree, "-o", tmp_path / "out", "-r", *options)
    assert result.code == 0, result.stderr
    assert outputs(tmp_path / "out") == expected


def test_default_output_folder_is_beside_the_input_folder(dossr, tree, tmp_path):
    assert dossr("batch", tree, "--exclude", "b.jpg").code == 0
    assert outputs(tmp_path / "in_x4") == {"a_x4.png"}


def test_dot_as_the_folder(dossr, tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tree)
    result = dossr("batch", ".", "--include", "a.png")
    assert result.code == 0, result.stderr
    assert outputs(tmp_path / "in_x4") == {"a_x4.png"}


def test_output_folder_inside_the_input_tree_is_not_read_as_input(dossr, tree):
    first = dossr("batch", tree, "-o", tree / "up", "-r", "--exclude", "*broken*")
    assert first.code == 0
    second = dossr("batch", tree, "-o", tree / "up", "-r", "--exclude", "*broken*", "--json")
    assert sorted(statuses(second).values()) == ["skipped"] * 3


def test_scale_format_suffix_quality_and_metadata(dossr, tree, tmp_path):
    out = tmp_path / "out"
    result = dossr("batch", tree, "-o", out, "--scale", 2, "--format", "webp", "--suffix", "_s", "--quality", 80,
                   "--metadata", "none", "--include", "a.png")
    assert result.code == 0, result.stderr
    image = decode(out / "a_s.webp")
    assert image.format == "WEBP" and image.size == (32, 32)


@pytest.mark.parametrize(("options", "size"), [(["--width", "40"], (40, 40)), (["--height", "20"], (20, 20))])
def test_width_and_height(dossr, tree, tmp_path, options, size):
    result = dossr("batch", tree, "-o", tmp_path / "out", "--include", "a.png", *options)
    assert result.code == 0, result.stderr
    (name,) = outputs(tmp_path / "out")
    assert decode(tmp_path / "out" / name).size == size


def test_compare_mirrors_the_tree(dossr, tree, tmp_path):
    result = dossr("batch", tree, "-o", tmp_path / "out", "-r", "--exclude", "*broken*", "--compare",
                   tmp_path / "cmp")
    assert result.code == 0, result.stderr
    assert files_in(tmp_path / "cmp") == {"a_compare.png", "b_compare.png", "sub/c_compare.png"}
    assert decode(tmp_path / "cmp" / "b_compare.png").size == (96 + 2 + 96, 64)


def test_json_lines(dossr, tree, tmp_path):
    out = tmp_path / "out"
    result = dossr("batch", tree, "-o", out, "-r", "--json")
    records = json_lines(result)
    assert result.code == 1 and len(records) == 4
    by_status = {}
    for record in records:
        by_status.setdefault(record["status"], []).append(record)
    assert len(by_status["done"]) == 3 and len(by_status["failed"]) == 1
    failed = by_status["failed"][0]
    assert failed["input"] == str(tree / "sub" / "broken.png") and "truncated" in failed["error"]
    done = {r["input"]: r for r in by_status["done"]}
    assert done[str(tree / "a.png")]["output"] == str(out / "a_x4.png")
    assert all(r["seconds"] >= 0 for r in by_status["done"])
    again = json_lines(dossr("batch", tree, "-o", out, "-r", "--json"))
    assert {r["input"]: r["status"] for r in again} == {
        str(tree / "a.png"): "skipped", str(tree / "b.jpg"): "skipped", str(tree / "sub" / "c.png"): "skipped",
        str(tree / "sub" / "broken.png"): "failed"}
    assert {r["output"] for r in again if r["status"] == "skipped"} == {r["output"] for r in by_status["done"]}


def test_quiet(dossr, tree, tmp_path):
    good = dossr("batch", tree, "-o", tmp_path / "out", "-q")
    assert good.code == 0 and good.stderr == "" and good.stdout == b""
    bad = dossr("batch", tree, "-o", tmp_path / "out2", "-r", "-q")
    assert bad.code == 1 and bad.stderr.splitlines() == bad.error_lines and len(bad.error_lines) == 1


def test_existing_output_not_written_by_the_batch_needs_overwrite(dossr, tree, tmp_path):
    out = tmp_path / "out"
    save(smooth_image(8, 8), out / "a_x4.png")
    before = (out / "a_x4.png").read_bytes()
    refused = dossr("batch", tree, "-o", out, "--include", "a.png")
    assert refused.code == 1 and "--overwrite" in refused.error_lines[0]
    assert (out / "a_x4.png").read_bytes() == before
    replaced = dossr("batch", tree, "-o", out, "--include", "a.png", "--overwrite")
    assert replaced.code == 0 and decode(out / "a_x4.png").size == (64, 64)


# ------------------------------------------------------------------------------------------------ re-runs


@pytest.fixture
def done_once(dossr, tree, tmp_path):
    """A finished first run over in/ (no subfolders): a.png and b.jpg done."""
    out = tmp_path / "out"
    assert dossr("batch", tree, "-o", out, "--steps", 2).code == 0
    return out


def snapshot(out):
    return {name: ((out / name).stat().st_mtime_ns, (out / name).read_bytes()) for name in outputs(out)}


def test_same_parameters_skip_everything_without_loading_the_model(dossr, tree, done_once, monkeypatch):
    before = snapshot(done_once)

    def no_model(*args, **kwargs):
        raise AssertionError("a re-run with nothing to do loaded the model")

    monkeypatch.setattr(common, "load_pipeline", no_model)
    result = dossr("batch", tree, "-o", done_once, "--steps", 2)
    assert result.code == 0, result.stderr
    assert "2 images: 0 to do" in result.stderr
    assert batch_summary(result.stderr) == {"done": 0, "skipped": 2, "failed": 0}
    assert snapshot(done_once) == before


def test_changed_steps_redo_everything(dossr, tree, done_once):
    before = snapshot(done_once)
    result = dossr("batch", tree, "-o", done_once, "--steps", 3, "--json")
    assert result.code == 0, result.stderr
    assert statuses(result) == {"a.png": "done", "b.jpg": "done"}
    after = snapshot(done_once)
    assert after.keys() == before.keys() and all(after[k][1] != before[k][1] for k in after)


def test_changed_input_is_redone_and_only_it(dossr, tree, done_once):
    before = snapshot(done_once)
    save(smooth_image(16, 16, "a, edited"), tree / "a.png")
    result = dossr("batch", tree, "-o", done_once, "--steps", 2, "--json")
    assert result.code == 0, result.stderr
    assert statuses(result) == {"a.png": "done", "b.jpg": "skipped"}
    after = snapshot(done_once)
    assert after["b_x4.jpg"] == before["b_x4.jpg"] and after["a_x4.png"][1] != before["a_x4.png"][1]


def test_other_weights_redo_everything(dossr, tree, done_once, other_weights):
    result = dossr("batch", tree, "-o", done_once, "--steps", 2, "--json", "--weights", other_weights)
    assert result.code == 0, result.stderr
    assert statuses(result) == {"a.png": "done", "b.jpg": "done"}


def test_fixed_input_is_retried(dossr, tree, tmp_path):
    out = tmp_path / "out"
    first = dossr("batch", tree / "sub", "-o", out, "--json")
    assert first.code == 1
    assert {r["input"].rsplit("/", 1)[1]: r["status"] for r in json_lines(first)} == {"broken.png": "failed",
                                                                                     "c.png": "done"}
    save(smooth_image(16, 16, "fixed"), tree / "sub" / "broken.png")
    second = dossr("batch", tree / "sub", "-o", out, "--json")
    assert second.code == 0, second.stderr
    assert {r["input"].rsplit("/", 1)[1]: r["status"] for r in json_lines(second)} == {"broken.png": "done",
                                                                                      "c.png": "skipped"}
    assert decode(out / "broken_x4.png").size == (64, 64)


def test_deleted_output_is_redone(dossr, tree, done_once):
    (done_once / "a_x4.png").unlink()
    result = dossr("batch", tree, "-o", done_once, "--steps", 2, "--json")
    assert statuses(result) == {"a.png": "done", "b.jpg": "skipped"}
    assert decode(done_once / "a_x4.png").size == (64, 64)


def test_unknown_engine_is_a_usage_error(dossr, tree, tmp_path):
    result = dossr("batch", tree, "-o", tmp_path / "out", "--engine", "spark")
    assert result.code == 2 and result.error_lines == ["dossr: error: --engine must be one of local, ray; got 'spark'"]
    assert not (tmp_path / "out").exists()


def test_debug_shows_a_traceback_for_a_run_level_failure(dossr, tree, tmp_path):
    plain = dossr("batch", tree, "-o", tmp_path / "out", "--weights", "no-such-weights")
    debug = dossr("batch", tree, "-o", tmp_path / "out", "--weights", "no-such-weights", "--debug")
    assert plain.code == debug.code == 1
    assert "Traceback" not in plain.stderr and "Traceback" in debug.stderr
    assert not (tmp_path / "out").exists()


def test_batch_says_what_a_format_cannot_keep(dossr, tmp_path):
    save(smooth_image(16, 16, "t").convert("RGBA"), tmp_path / "in" / "t.png")
    result = dossr("batch", tmp_path / "in", "-o", tmp_path / "out", "--format", "jpg")
    assert result.code == 0
    assert "dossr: note: t.png: jpg has no alpha channel" in result.stderr
    assert decode(tmp_path / "out" / "t_x4.jpg").mode == "RGB"


def test_a_compare_folder_inside_the_input_tree_is_not_read_back(dossr, tmp_path):
    root = tmp_path / "in"
    save(smooth_image(16, 16, "a"), root / "a.png")
    for _ in range(2):
        result = dossr("batch", root, "-r", "-o", tmp_path / "out", "--compare", root / "side")
        assert result.code == 0, result.stderr
    assert files_in(root) == {"a.png", "side/a_compare.png"}
    assert batch_summary(result.stderr) == {"done": 0, "skipped": 1, "failed": 0}


def test_same_size_images_run_as_one_batch_with_the_same_results(dossr, tmp_path, monkeypatch):
    """--batch-size groups images of one size; each keeps its own noise, so results match unbatched runs."""
    from dossr_cli.pipeline import DoSSRPipeline

    root = tmp_path / "in"
    for key in ("a", "b", "c"):
        save(smooth_image(16, 16, key), root / f"{key}.png")
    save(smooth_image(16, 24, "d"), root / "d.png")
    batches = []
    original = DoSSRPipeline.upscale_tensor

    def counting(self, lq, *args, **kwargs):
        batches.append(lq.shape[0])
        return original(self, lq, *args, **kwargs)

    monkeypatch.setattr(DoSSRPipeline, "upscale_tensor", counting)
    assert dossr("batch", root, "-o", tmp_path / "batched", "--batch-size", "4").code == 0
    assert sorted(batches) == [1, 3]  # a, b, c together; d alone (another size)
    batches.clear()
    assert dossr("batch", root, "-o", tmp_path / "single", "--batch-size", "1").code == 0
    assert batches == [1, 1, 1, 1]
    for name in ("a_x4.png", "b_x4.png", "c_x4.png", "d_x4.png"):
        batched = np.asarray(decode(tmp_path / "batched" / name), dtype=int)
        single = np.asarray(decode(tmp_path / "single" / name), dtype=int)
        assert np.abs(batched - single).max() <= 1  # float kernels differ by ~1e-6 with the batch size
    assert dossr("batch", root, "-o", tmp_path / "x", "--batch-size", "-1").code == 2


# ------------------------------------------------------------------------------------------------ runs that died


def die_holding(out, rel, sha, times=1, params_of=None):
    """A real process claims `rel` in out/'s journal and is killed holding it, `times` over (a run the kernel
    killed out of memory leaves just this); with the parameters of the journal's row `params_of`, if given."""
    import os
    import signal
    import subprocess
    import sys

    code = (f"import os, signal; from pathlib import Path; from dossr_cli.batch.journal import Journal\n"
            f"import json; journal = Journal(Path({str(out)!r}))\n"
            f"row = journal.db.execute('SELECT params, output FROM jobs WHERE input = ?', ({params_of!r},)).fetchone()\n"
            f"params, output = (json.loads(row[0]), row[1].replace({params_of!r}[:-4], {rel!r}[:-4])) if row else ({{}}, 'x')\n"
            f"while journal.claim({rel!r}, {sha!r}, params, Path(output)).result != 'claimed': pass\n"
            "os.kill(os.getpid(), signal.SIGKILL)")
    for _ in range(times):
        done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                              timeout=60, check=False)
        assert done.returncode == -signal.SIGKILL


@pytest.fixture
def three(tmp_path):
    root = tmp_path / "in"
    for key in ("a", "b", "c"):
        save(smooth_image(16, 16, key), root / f"{key}.png")
    return root


def test_an_image_a_run_died_on_is_tried_after_everything_else(dossr, three, tmp_path):
    from dossr_cli.batch.journal import content_sha256

    out = tmp_path / "out"
    die_holding(out, "a.png", content_sha256(three / "a.png"))
    result = dossr("batch", three, "-o", out, "--json")
    assert result.code == 0, result.stderr
    assert [(r["input"].rsplit("/", 1)[1], r["status"]) for r in json_lines(result)] == [
        ("b.png", "done"), ("c.png", "done"), ("a.png", "done")]
    assert journal_rows(out) == {"a.png": "done", "b.png": "done", "c.png": "done"}


def test_an_image_that_brought_down_two_runs_is_failed_and_the_rest_done(dossr, three, tmp_path):
    from dossr_cli.batch.journal import content_sha256

    out = tmp_path / "out"
    assert dossr("batch", three, "-o", out, "--include", "c.png").code == 0  # the options' row, for die_holding
    die_holding(out, "a.png", content_sha256(three / "a.png"), times=2, params_of="c.png")
    result = dossr("batch", three, "-o", out, "--json")
    assert result.code == 1
    assert result.error_lines == [f"dossr: error: a.png: {BROUGHT_DOWN_TWO}"]
    assert statuses(result) == {"a.png": "failed", "b.png": "done", "c.png": "skipped"}
    assert batch_summary(result.stderr) == {"done": 1, "skipped": 1, "failed": 1}
    again = dossr("batch", three, "-o", out, "--json")  # not tried again: it would bring this run down too
    assert again.code == 1 and statuses(again) == {"a.png": "failed", "b.png": "skipped", "c.png": "skipped"}
    assert outputs(out) == {"b_x4.png", "c_x4.png"}
    save(smooth_image(16, 16, "a, replaced"), three / "a.png")  # another file: tried afresh
    fixed = dossr("batch", three, "-o", out, "--json")
    assert fixed.code == 0 and statuses(fixed) == {"a.png": "done", "b.png": "skipped", "c.png": "skipped"}


def test_a_run_stopped_by_ctrl_c_is_no_crash(dossr, three, tmp_path, monkeypatch):
    """Ctrl-C hands the image back: the next run takes it in its place, and nothing is counted against it."""
    from dossr_cli.pipeline import DoSSRPipeline

    out = tmp_path / "out"
    original = DoSSRPipeline.upscale_tensor

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(DoSSRPipeline, "upscale_tensor", interrupted)
    assert dossr("batch", three, "-o", out).code == 130
    monkeypatch.setattr(DoSSRPipeline, "upscale_tensor", original)
    result = dossr("batch", three, "-o", out, "--json")
    assert result.code == 0 and [r["input"].rsplit("/", 1)[1] for r in json_lines(result)] == ["a.png", "b.png", "c.png"]
    with contextlib.closing(sqlite3.connect(out / JOURNAL_NAME)) as db:
        assert db.execute("SELECT SUM(crashes) FROM jobs").fetchone() == (0,)

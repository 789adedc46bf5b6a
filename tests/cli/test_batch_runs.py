"""`dossr batch` as real processes against one journal: runs side by side, runs killed on an image, a full disk.

Each subprocess pays the torch import, so the images are tiny and few.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from small_disk import FILL, run_with_small_disk

from dossr_cli.batch.journal import JOURNAL_NAME

from .helpers import batch_summary, decode, dossr_command, files_in, save, smooth_image, subprocess_env

BROUGHT_DOWN_TWO = ("brought down 2 runs (killed or out of memory while processing it); run it alone with "
                    "--debug or raise limits")

def journal_rows(outdir: Path, query: str, *args: object) -> list[tuple]:
    """The rows of one query on the journal; none while the batch has not created it (or its table) yet."""
    if not (outdir / JOURNAL_NAME).is_file():
        return []
    try:
        with contextlib.closing(sqlite3.connect(outdir / JOURNAL_NAME, timeout=30)) as db:
            return db.execute(query, args).fetchall()
    except sqlite3.OperationalError:  # the table is not there yet
        return []


def journal_status(outdir: Path) -> dict[str, str]:
    """Inputs and their status; empty while the batch has not created the journal yet."""
    return dict(journal_rows(outdir, "SELECT input, status FROM jobs"))


def statuses(stdout: bytes) -> list[tuple[str, str]]:
    """(input name, status) in the order the run reported them (--json)."""
    return [(Path(r["input"]).name, r["status"]) for r in map(json.loads, stdout.decode().splitlines())]


def claimed_at(outdir: Path, name: str) -> float | None:
    """When `name` was last claimed (marked running); None unless it is running. One query: the run
    being watched may take the row from a dead run's claim between two (a CI run saw it happen)."""
    rows = journal_rows(outdir, "SELECT updated FROM jobs WHERE input = ? AND status = 'running'", name)
    return rows[0][0] if rows else None


def killed_while_running(args: list[object], out: Path, name: str) -> dict[str, str]:
    """Starts `dossr batch ARGS`, SIGKILLs it while it computes `name`; the journal as it was then."""
    before = claimed_at(out, name)  # a dead run's claim
    process = subprocess.Popen(dossr_command("batch", *args), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=subprocess_env())
    try:
        deadline = time.monotonic() + 240
        while claimed_at(out, name) in (None, before):
            assert process.poll() is None, f"the batch ended before {name} was running: {journal_status(out)}"
            assert time.monotonic() < deadline, f"{name} not running within 240 s"
            time.sleep(0.01)
        seen = journal_status(out)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return seen


def test_an_image_that_brings_down_two_runs_is_failed_and_the_rest_of_the_folder_completes(tiny_weights, tmp_path):
    """Killed on bomb.png (as the kernel kills a run out of memory): the next run tries it after everything else;
    once it has brought down two runs it is failed with that reason and the folder completes."""
    source = tmp_path / "in"
    save(smooth_image(64, 64, "bomb"), source / "a-bomb.png")  # first in sorted order, and the slowest
    for name in ("b", "c"):
        save(smooth_image(16, 16, name), source / f"{name}.png")
    out = tmp_path / "out"
    args = [source, "-o", out, "--weights", tiny_weights, "--steps", "4"]

    first = killed_while_running(args, out, "a-bomb.png")
    assert first == {"a-bomb.png": "running"}
    second = killed_while_running(args, out, "a-bomb.png")
    assert second == {"a-bomb.png": "running", "b.png": "done", "c.png": "done"}  # it went last

    third = subprocess.run(dossr_command("batch", *args, "--json"), capture_output=True, env=subprocess_env(),
                           timeout=240, check=False)
    stderr = third.stderr.decode()
    assert third.returncode == 1 and "Traceback" not in stderr
    assert statuses(third.stdout) == [("a-bomb.png", "failed"), ("b.png", "skipped"), ("c.png", "skipped")]
    assert [line for line in stderr.splitlines() if line.startswith("dossr: error:")] == [
        f"dossr: error: a-bomb.png: {BROUGHT_DOWN_TWO}"]
    assert batch_summary(stderr) == {"done": 0, "skipped": 2, "failed": 1}
    assert journal_status(out) == {"a-bomb.png": "failed", "b.png": "done", "c.png": "done"}
    assert {name for name in files_in(out) if not name.startswith(".")} == {"b_x4.png", "c_x4.png"}


def test_runs_side_by_side_compute_each_image_once_and_all_exit_0(tiny_weights, tmp_path):
    source = tmp_path / "in"
    names = [f"img{i}.png" for i in range(9)]
    for name in names:
        save(smooth_image(16, 16, name), source / name)
    out = tmp_path / "out"
    command = dossr_command("batch", source, "-o", out, "--weights", tiny_weights, "--steps", "2", "--json")
    processes = [subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=subprocess_env()) for _ in range(3)]
    results = [process.communicate(timeout=400) for process in processes]
    errors = [stderr.decode() for _, stderr in results]
    assert [process.returncode for process in processes] == [0, 0, 0], errors
    assert all("dossr: error" not in text and "Traceback" not in text for text in errors)
    reports = [dict(statuses(stdout)) for stdout, _ in results]
    assert all(sorted(report) == names for report in reports)  # each run accounts for the whole folder
    computed = [name for report in reports for name, status in report.items() if status == "done"]
    assert sorted(computed) == names  # every image computed exactly once, by one run or another
    elsewhere = [sum(status == "elsewhere" for status in report.values()) for report in reports]
    for report, text, count in zip(reports, errors, elsewhere):
        assert set(report.values()) <= {"done", "skipped", "elsewhere"}
        assert batch_summary(text)["done"] == sum(status == "done" for status in report.values())
        if count:
            assert re.search(rf"^\s*done by another run\W+{count}\s*$", text, re.MULTILINE), text
    assert set(journal_status(out).values()) == {"done"}
    assert {name for name in files_in(out) if not name.startswith(".")} == {n.replace(".png", "_x4.png") for n in names}
    for name in names:
        assert decode(out / name.replace(".png", "_x4.png")).size == (64, 64)


@pytest.mark.parametrize(("side", "free_kib", "full_at"), [
    (40, 160, r"img\d_x4\.png"),  # ~62 KB outputs: an image write meets the full disk
    (16, 120, r"\.dossr-journal\.sqlite"),  # ~10 KB outputs: the journal's WAL does first
], ids=["image-write", "journal-write"])
def test_a_full_disk_stops_the_run_with_its_summary_and_the_rerun_finishes(tiny_weights, tmp_path, side, free_kib,
                                                                          full_at):
    """On a real full filesystem (a tiny tmpfs): nothing half-written, the journal consistent, then the rest."""
    source = tmp_path / "in"
    names = [f"img{i}.png" for i in range(6)]
    for name in names:
        save(smooth_image(side, side, name), source / name)
    out, kept = tmp_path / "out", tmp_path / "kept"
    out.mkdir()
    batch = shlex.join(map(str, dossr_command("batch", source, "-o", out, "--weights", tiny_weights, "--steps", "1",
                                              "--json")))
    script = FILL + "".join(
        f"{fill}\n{batch} > {kept}/{run}.json 2> {kept}/{run}.err; echo $? > {kept}/{run}.rc\n"
        f"mkdir -p {kept}/{run} && cp -a {out}/. {kept}/{run}/\n"
        for run, fill in (("full", f"fill 0 {out}"), ("filling", f"fill {free_kib} {out}"), ("freed", f"rm {out}/.filler")))
    kept.mkdir()
    done = run_with_small_disk(str(out), 512, script, env=subprocess_env())
    assert done.returncode == 0, done.stderr

    def run(name: str) -> tuple[int, list[tuple[str, str]], str]:
        return (int((kept / f"{name}.rc").read_text()), statuses((kept / f"{name}.json").read_bytes()),
                (kept / f"{name}.err").read_text())

    def error_lines(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith("dossr: error:")]

    # already full: one line, and no journal (not even an empty one) left behind
    code, _, stderr = run("full")
    assert code == 1 and error_lines(stderr) == [
        (f"dossr: error: disk full writing {out / JOURNAL_NAME}: free space and run the same command again; "
         "finished images are kept")]
    assert files_in(kept / "full") == {".filler"}

    # full while it runs: the summary, one line naming the file, nothing half-written, the journal consistent
    code, reported, stderr = run("filling")
    assert code == 1 and "Traceback" not in stderr
    finished = [name for name, status in reported if status == "done"]
    assert reported == [(name, "done") for name in finished] and 1 <= len(finished) < len(names), stderr
    summary = batch_summary(stderr)
    assert summary == {"done": len(finished), "skipped": 0, "failed": 0}, stderr
    assert re.search(rf"^\s*not done yet\W+{len(names) - len(finished)}\s*$", stderr, re.MULTILINE), stderr
    (line,) = error_lines(stderr)
    assert re.fullmatch(rf"dossr: error: disk full writing {re.escape(str(out))}/{full_at}"
                        ": free space and run the same command again; finished images are kept", line), line
    leftovers = files_in(kept / "filling") - {".filler", JOURNAL_NAME, JOURNAL_NAME + "-wal", JOURNAL_NAME + "-shm"}
    assert leftovers == {name.replace(".png", "_x4.png") for name in finished}  # no temporary or partial file
    for name in leftovers:
        assert decode(kept / "filling" / name).size == (4 * side, 4 * side)
    with contextlib.closing(sqlite3.connect(kept / "filling" / JOURNAL_NAME)) as db:
        rows = dict(db.execute("SELECT input, status FROM jobs").fetchall())
    assert {name for name, status in rows.items() if status == "done"} == set(finished)
    assert set(rows.values()) <= {"done", "interrupted"}  # what it held is handed back: no crash, no failure

    # space freed: the same command finishes the rest and leaves what was finished alone
    code, reported, stderr = run("freed")
    assert code == 0, stderr
    assert sorted(reported) == sorted((name, "skipped" if name in finished else "done") for name in names)
    assert {name for name in files_in(kept / "freed") if not name.startswith(".")} == {
        name.replace(".png", "_x4.png") for name in names}
    for name in finished:
        assert (kept / "freed" / name.replace(".png", "_x4.png")).read_bytes() == (
            kept / "filling" / name.replace(".png", "_x4.png")).read_bytes()

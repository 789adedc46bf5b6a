"""`dossr` as real subprocesses: pipes, exit codes, Ctrl-C, a killed batch resumed, --version.

Each subprocess pays the torch import (~3-4 s), so only what needs a real process is here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import dossr_cli
from dossr_cli.batch.journal import JOURNAL_NAME

from .helpers import (
    batch_summary,
    decode,
    default_sigint,
    dossr_command,
    files_in,
    run_subprocess,
    save,
    smooth_image,
    subprocess_env,
)

ESCAPE = "\x1b"


def test_cat_into_a_pipe_gives_the_same_image_as_the_file_path(tiny_weights, tmp_path):
    """`cat lr.png | dossr upscale - -o - > out.png`, through a real shell pipe."""
    source = save(smooth_image(24, 32), tmp_path / "lr.png")
    options = ["--weights", tiny_weights, "--steps", "2", "--seed", "3"]
    piped = tmp_path / "piped.png"
    command = (f"cat {shlex.quote(str(source))} | {shlex.join(dossr_command('upscale', '-', '-o', '-', *options))}"
               f" > {shlex.quote(str(piped))}")
    shell = subprocess.run(command, shell=True, capture_output=True, env=subprocess_env(), timeout=120, check=False)
    assert shell.returncode == 0, shell.stderr.decode()
    assert shell.stderr == b""  # nothing for people on a successful pipe run, and no progress escape codes
    by_path = run_subprocess("upscale", source, "-o", tmp_path / "by-path.png", *options)
    assert by_path.code == 0, by_path.stderr
    assert ESCAPE not in by_path.stderr and "lr.png ->" in by_path.stderr
    assert decode(piped).size == (128, 96)
    assert piped.read_bytes() == (tmp_path / "by-path.png").read_bytes()


def test_exit_codes_and_json_end_to_end(tiny_weights, tmp_path):
    good = save(smooth_image(16, 16), tmp_path / "good.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "out").mkdir()
    some_failed = run_subprocess("upscale", good, tmp_path / "broken.jpg", "-o", tmp_path / "out", "--json",
                                 "--weights", tiny_weights, "--steps", "1")
    assert some_failed.code == 1
    assert "Traceback" not in some_failed.stderr and ESCAPE not in some_failed.stderr
    assert len(some_failed.error_lines) == 1 and "broken.jpg" in some_failed.error_lines[0]
    records = [json.loads(line) for line in some_failed.stdout.decode().splitlines()]
    assert [(Path(r["input"]).name, r["status"]) for r in records] == [("good.png", "ok"), ("broken.jpg", "failed")]
    assert files_in(tmp_path / "out") == {"good_x4.png"}
    assert decode(tmp_path / "out" / "good_x4.png").size == (64, 64)

    usage = run_subprocess("upscale", good, "--order", "9", "--weights", tiny_weights)
    assert usage.code == 2
    assert usage.stderr == "dossr: error: --order must be one of 1, 2, 3; got 9\n"


def test_version(tmp_path):
    script = Path(sys.executable).with_name("dossr")  # the console script, where the venv has one
    command = [str(script), "--version"] if script.is_file() else dossr_command("--version")
    done = subprocess.run(command, capture_output=True, env=subprocess_env(), timeout=120, check=False, cwd=tmp_path)
    assert done.returncode == 0 and done.stderr == b""
    assert done.stdout.decode() == f"dossr {dossr_cli.__version__}\n"


class TerminalReader:
    """Reads a pseudo-terminal's output in a thread, so the child never blocks on a full buffer."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.data = bytearray()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # EIO: the child closed its end
                return
            if not chunk:
                return
            self.data.extend(chunk)

    def wait_for(self, text: bytes, process: subprocess.Popen, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.data:
            assert process.poll() is None, f"exited early: {bytes(self.data).decode(errors='replace')}"
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s"
            time.sleep(0.02)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal and SIGINT")
def test_ctrl_c_exits_130_and_leaves_nothing(tiny_weights, tmp_path):
    """Ctrl-C at a terminal while the model is working: stderr is a pty, so the progress bar shows when it is."""
    import pty

    source = save(smooth_image(32, 32), tmp_path / "lr.png")
    out = tmp_path / "out"
    out.mkdir()
    master, slave = pty.openpty()
    process = subprocess.Popen(dossr_command("upscale", source, "-o", out / "big.png", "--weights", tiny_weights,
                                             "--steps", "40"),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave,
                               env={**subprocess_env(), "TERM": "xterm", "COLUMNS": "100"}, preexec_fn=default_sigint)  # noqa: PLW1509
    os.close(slave)
    terminal = TerminalReader(master)
    try:
        terminal.wait_for(b"steps", process, timeout=120)  # the solver's progress bar: model work under way
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        terminal.thread.join(timeout=5)
        os.close(master)
    text = bytes(terminal.data).decode(errors="replace")
    assert code == 130, text
    assert "dossr: interrupted" in text and "Traceback" not in text
    assert files_in(out) == set()  # no output and no temporary file


def journal_status(outdir: Path) -> dict[str, str]:
    with contextlib.closing(sqlite3.connect(outdir / JOURNAL_NAME, timeout=30)) as db:
        return dict(db.execute("SELECT input, status FROM jobs").fetchall())


def done_in_journal(outdir: Path) -> set[str]:
    """Inputs the journal calls done; empty while the batch has not created it yet."""
    if not (outdir / JOURNAL_NAME).is_file():
        return set()
    try:
        return {name for name, status in journal_status(outdir).items() if status == "done"}
    except sqlite3.OperationalError:  # the table is not there yet
        return set()


def test_killed_batch_resumes_without_redoing_finished_work(tiny_weights, tmp_path):
    source = tmp_path / "in"
    names = [f"img{i}.png" for i in range(6)]
    for name in names:
        save(smooth_image(32, 32, name), source / name)
    out = tmp_path / "out"
    options = ["-o", out, "--weights", tiny_weights, "--steps", "5"]

    def written() -> set[str]:
        return {name for name in files_in(out) if not name.startswith(".")} if out.is_dir() else set()

    process = subprocess.Popen(dossr_command("batch", source, *options), stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=subprocess_env())
    try:
        deadline = time.monotonic() + 120
        while len(done_in_journal(out)) < 2:  # the journal, not the folder: an output is written just before
            assert process.poll() is None, "the batch ended before it could be killed"
            assert time.monotonic() < deadline, "no two outputs within 120 s"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    finished = done_in_journal(out)
    assert len(finished) >= 2
    assert len(finished) < len(names), "every image finished before the kill: nothing left to resume"
    before = {name: ((out / f"{Path(name).stem}_x4.png").stat().st_mtime_ns,
                     (out / f"{Path(name).stem}_x4.png").read_bytes()) for name in finished}

    resumed = run_subprocess("batch", source, *options, "--json")
    assert resumed.code == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr and ESCAPE not in resumed.stderr
    statuses = {Path(r["input"]).name: r["status"] for r in map(json.loads, resumed.stdout.decode().splitlines())}
    assert statuses == {name: "skipped" if name in finished else "done" for name in names}
    assert batch_summary(resumed.stderr) == {"done": len(names) - len(finished), "skipped": len(finished), "failed": 0}
    for name, (mtime, data) in before.items():
        path = out / f"{Path(name).stem}_x4.png"
        assert (path.stat().st_mtime_ns, path.read_bytes()) == (mtime, data)
    assert written() == {f"{Path(name).stem}_x4.png" for name in names}
    for name in written():
        assert decode(out / name).size == (128, 128)
    assert set(journal_status(out).values()) == {"done"}
    leftovers = files_in(out) - written() - {JOURNAL_NAME, JOURNAL_NAME + "-wal", JOURNAL_NAME + "-shm"}
    assert all(name.startswith(".") and name.endswith(".tmp") for name in leftovers)  # SIGKILL mid-write, at most

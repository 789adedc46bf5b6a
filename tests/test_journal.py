"""The journal's claims: held while the owner lives, lapsed when it dies, counted as crashes; a full disk."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from small_disk import FILL, run_with_small_disk

from dossr_cli.batch import journal as claims
from dossr_cli.batch.journal import CRASH_LIMIT, JOURNAL_NAME, Journal, crash_reason
from dossr_cli.batch.owner import Owner, this_run

PARAMS = {"scale": 4}


def child(code: str, stdin: int | None = None) -> subprocess.Popen:
    """A real other process running `code` (the journal layer only: no torch), reading our PYTHONPATH."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdin=stdin, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def claimed_by_a_child(folder: Path, names: list[str]) -> subprocess.Popen:
    """A child that claims `names` and then works on them until killed."""
    process = child(f"""
        import sys, time
        from pathlib import Path
        from dossr_cli.batch.journal import Journal
        journal = Journal(Path({str(folder)!r}))
        for name in {names!r}:
            assert journal.claim(name, "sha", {PARAMS!r}, Path({str(folder)!r}) / (name + ".out")).result == "claimed"
        print("claimed", flush=True)
        time.sleep(600)
    """)
    assert process.stdout.readline().strip() == "claimed"
    return process


def killed(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def rows(folder: Path) -> dict[str, tuple[str, int, str | None]]:
    with contextlib.closing(sqlite3.connect(folder / JOURNAL_NAME)) as db:
        return {name: (status, crashes, error) for name, status, crashes, error in
                db.execute("SELECT input, status, crashes, error FROM jobs")}


def claim(journal: Journal, name: str) -> str:
    return journal.claim(name, "sha", PARAMS, journal.path.parent / f"{name}.out").result


def test_a_claim_is_held_while_its_owner_lives_and_counted_as_a_crash_once_it_is_killed(tmp_path):
    process = claimed_by_a_child(tmp_path, ["a", "b"])
    journal = Journal(tmp_path)
    try:
        assert claim(journal, "a") == claims.HELD
        journal.reclaim_orphans()
        assert rows(tmp_path)["a"][:2] == ("running", 0)  # a live owner's claim is left alone
        killed(process)
        assert claim(journal, "a") == claims.ORPHANED  # found at claim time: counted, to be tried last
        journal.reclaim_orphans()  # found at the start of a run: counted once, by whoever finds it first
        assert rows(tmp_path)["a"][:2] == rows(tmp_path)["b"][:2] == ("interrupted", 1)
        assert claim(journal, "a") == claims.CLAIMED
    finally:
        if process.poll() is None:
            killed(process)
        journal.close()


def test_an_image_that_brought_down_two_runs_is_failed_and_not_claimed_again(tmp_path):
    for _ in range(CRASH_LIMIT):
        killed(claimed_by_a_child(tmp_path, ["bomb"]))
        journal = Journal(tmp_path)
        journal.reclaim_orphans()
        journal.close()
    assert rows(tmp_path)["bomb"] == ("failed", 2, crash_reason(2))
    assert crash_reason(2) == ("brought down 2 runs (killed or out of memory while processing it); run it alone with "
                               "--debug or raise limits")
    journal = Journal(tmp_path)
    try:
        assert journal.claim("bomb", "sha", PARAMS, tmp_path / "bomb.out") == claims.Claim(
            claims.CRASH_FAILED, error=crash_reason(2))
        assert claim(journal, "bomb") == claims.CRASH_FAILED
        # another file under that name is another image: it starts afresh
        assert journal.claim("bomb", "new sha", PARAMS, tmp_path / "bomb.out").result == claims.CLAIMED
        assert rows(tmp_path)["bomb"][:2] == ("running", 0)
    finally:
        journal.close()


def test_a_clean_stop_hands_its_claims_back_without_counting_a_crash(tmp_path):
    journal = Journal(tmp_path)
    assert claim(journal, "a") == claims.CLAIMED
    journal.close()  # Ctrl-C, a full disk: the run stops on its own terms
    assert rows(tmp_path)["a"][:2] == ("interrupted", 0)
    again = Journal(tmp_path)
    again.reclaim_orphans()
    assert claim(again, "a") == claims.CLAIMED and rows(tmp_path)["a"][:2] == ("running", 0)
    again.close()


def test_a_reused_pid_or_a_silent_remote_owner_does_not_hold_a_claim(tmp_path):
    journal = Journal(tmp_path, lease=60)
    me = this_run()
    owners = {
        "reused pid": (Owner(me.machine, os.getpid(), "1", "other run"), time.time()),  # alive, but started later
        "remote, quiet": (Owner("another host", 1, "1", "r"), time.time() - 61),
        "remote, beating": (Owner("another host", 1, "1", "r"), time.time() - 5),
        "this machine, alive": (Owner(me.machine, os.getpid(), me.started, "another run"), time.time()),
    }
    for name, (owner, beat) in owners.items():
        journal.db.execute("INSERT INTO jobs (input, content_sha256, params_key, params, output, status, updated, "
                           "owner, heartbeat) VALUES (?, 'sha', ?, '{}', ?, 'running', 0, ?, ?)",
                           (name, claims.params_key(PARAMS), str(tmp_path / f"{name}.out"), str(owner), beat))
    try:
        assert {name: claim(journal, name) for name in owners} == {
            "reused pid": claims.ORPHANED, "remote, quiet": claims.ORPHANED, "remote, beating": claims.HELD,
            "this machine, alive": claims.HELD}
    finally:
        journal.close()


def test_a_live_claim_keeps_beating(tmp_path):
    """A run that works on one image for longer than the lease keeps it: its heartbeat refreshes the claim."""
    process = child(f"""
        import time
        from pathlib import Path
        from dossr_cli.batch.journal import Journal
        journal = Journal(Path({str(tmp_path)!r}), lease=1.0, heartbeat=0.1)
        journal.claim("a", "sha", {PARAMS!r}, Path({str(tmp_path)!r}) / "a.out")
        print("claimed", flush=True)
        time.sleep(600)
    """)
    assert process.stdout.readline().strip() == "claimed"
    journal = Journal(tmp_path, lease=1.0)
    try:
        time.sleep(2.5)  # more than twice the lease
        assert claim(journal, "a") == claims.HELD
        process.send_signal(signal.SIGSTOP)  # frozen: it looks alive, but its heartbeat stops
        time.sleep(2.0)
        assert claim(journal, "a") == claims.ORPHANED
    finally:
        killed(process)
        journal.close()


def test_claims_are_exclusive_across_processes(tmp_path):
    """Four processes race for the same 60 names: each name is claimed by exactly one of them."""
    names = [f"img{i:02}" for i in range(60)]
    Journal(tmp_path).close()
    code = f"""
        from pathlib import Path
        from dossr_cli.batch.journal import Journal
        journal = Journal(Path({str(tmp_path)!r}))
        won = [n for n in {names!r} if journal.claim(n, "sha", {PARAMS!r}, Path({str(tmp_path)!r}) / n).result
               == "claimed"]
        print(" ".join(won), flush=True)
        import os, sys; sys.stdin.read()  # alive until every run has claimed: a dead run's claims are orphans
        os._exit(0)  # keep the claims: no clean release
    """
    processes = [child(code, stdin=subprocess.PIPE) for _ in range(4)]
    won = [process.stdout.readline().split() for process in processes]
    for process in processes:
        process.communicate(input="", timeout=120)
    assert all(process.returncode == 0 for process in processes)
    assert sorted(name for names_won in won for name in names_won) == names


def test_a_journal_from_before_claims_gains_their_columns(tmp_path):
    with contextlib.closing(sqlite3.connect(tmp_path / JOURNAL_NAME)) as db:
        db.execute("CREATE TABLE jobs (input TEXT PRIMARY KEY, content_sha256 TEXT NOT NULL, params_key TEXT NOT NULL,"
                   " params TEXT NOT NULL, output TEXT NOT NULL, status TEXT NOT NULL, error TEXT, seconds REAL, "
                   "updated REAL NOT NULL)")
        db.execute("INSERT INTO jobs VALUES ('a', 'sha', ?, '{}', ?, 'done', NULL, 1.0, 0)",
                   (claims.params_key(PARAMS), str(tmp_path / "a.out")))
        db.commit()
    (tmp_path / "a.out").write_bytes(b"x")
    journal = Journal(tmp_path)
    try:
        assert journal.is_done("a", "sha", claims.params_key(PARAMS), tmp_path / "a.out")
        assert claim(journal, "b") == claims.CLAIMED and journal.get("a").crashes == 0
    finally:
        journal.close()


# ------------------------------------------------------------------------------------------------ a full disk


def journal_script(folder: Path, body: str) -> str:
    code = textwrap.dedent(f"""
        from pathlib import Path
        from dossr_cli.batch.journal import DiskFullError, Journal
        folder = Path({str(folder)!r})
    """) + textwrap.dedent(body)
    return f"{sys.executable} -c {__import__('shlex').quote(code)}\n"


@pytest.fixture
def env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def test_a_journal_on_a_full_disk_is_not_created_at_all(tmp_path, env):
    out = tmp_path / "out"
    out.mkdir()
    done = run_with_small_disk(str(out), 128, FILL + f"fill 0 {out}\n" + journal_script(out, """
        try:
            Journal(folder)
        except DiskFullError as error:
            print("refused:", error)
        Journal(folder / "new").close()
    """) + f"ls -A {out}\n", env=env)
    assert done.stdout.splitlines()[0] == (f"refused: disk full writing {out / JOURNAL_NAME}: free space and run the "
                                           "same command again; finished images are kept")
    assert "DiskFullError" in done.stderr  # the second journal, in a folder of its own, too
    assert done.stdout.splitlines()[1:] == [".filler"]  # no 0-byte journal, no temporary file, no folder


def test_a_journal_write_on_a_full_disk_is_a_disk_full_error(tmp_path, env):
    out = tmp_path / "out"
    out.mkdir()
    script = FILL + journal_script(out, """
        journal = Journal(folder)
        journal.claim("first", "sha", {}, folder / "first.out")
        journal.done("first", "sha", {}, folder / "first.out", 1.0)
        open(folder / ".filler", "wb").close()
        import subprocess; subprocess.run(["bash", "-c", 'dd if=/dev/zero of="$0/.filler" bs=1k', str(folder)],
                                          capture_output=True)
        written = 0
        try:
            for i in range(100000):
                journal.claim(f"i{i}", "sha", {}, folder / f"i{i}.out")
                journal.done(f"i{i}", "sha", {}, folder / f"i{i}.out", 1.0)
                written += 1
        except DiskFullError as error:
            print("stopped:", error)
        journal.close()
        import os; os.unlink(folder / ".filler")
        journal = Journal(folder)
        import json; print(json.dumps([journal.counts(), journal.get("first").status]))
        journal.close()
    """)
    done = run_with_small_disk(str(out), 256, script, env=env)
    assert done.returncode == 0, done.stderr
    stopped, after = done.stdout.splitlines()
    assert stopped == f"stopped: disk full writing {out / JOURNAL_NAME}: free space and run the same command again; " \
                      "finished images are kept"
    counts, first = json.loads(after)
    assert "running" not in counts  # the claim the full disk interrupted was handed back
    assert first == "done" and counts["done"] >= 1

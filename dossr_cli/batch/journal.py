"""The batch job journal: one SQLite file in the output folder, shared by every run on it.

Each input (by its path relative to the batch root) has its content hash, the
parameters that decide its pixels, its output path and a status. A re-run skips what is
done with the same content and parameters, retries what failed, and redoes what changed.

Runs claim an image before computing it: the row becomes `running` with its owner
(owner.py) and a heartbeat, in one `BEGIN IMMEDIATE` transaction, so of several runs
sharing the folder exactly one computes each image. A claim lapses when its owner is
gone (a process on this machine: at once; elsewhere, or frozen: when its heartbeat is
older than the lease). A lapsed claim means a run died on that image, killed or out of
memory: it is counted, the image is tried after everything else, and once it has brought
down CRASH_LIMIT runs it is failed and not tried again until the file or the options
change. The journal also records which output files the batch itself wrote, so a redo
may replace those (and only those) without --overwrite.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dossr_cli.batch.owner import Owner, this_run
from dossr_cli.errors import DossrError
from dossr_cli.imageio import link_without_clobbering

JOURNAL_NAME = ".dossr-journal.sqlite"
DONE, FAILED, RUNNING = "done", "failed", "running"
INTERRUPTED = "interrupted"  # its run stopped (or died) before finishing it: to do again
CRASH_LIMIT = 2  # an image that brought down this many runs is failed, not tried again
LEASE_SECONDS = 120.0  # a claim whose heartbeat is older than this has lapsed, whoever holds it
HEARTBEAT_SECONDS = 15.0
BUSY_SECONDS = 300.0  # how long a write waits for another run's transaction
_SQLITE_FULL = 13

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    input TEXT PRIMARY KEY,
    content_sha256 TEXT NOT NULL,
    params_key TEXT NOT NULL,
    params TEXT NOT NULL,
    output TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    seconds REAL,
    updated REAL NOT NULL,
    owner TEXT,
    heartbeat REAL,
    crashes INTEGER NOT NULL DEFAULT 0
)
"""
_ADDED_COLUMNS = {"owner": "TEXT", "heartbeat": "REAL", "crashes": "INTEGER NOT NULL DEFAULT 0"}  # since 0.x


def crash_reason(crashes: int) -> str:
    return (f"brought down {crashes} runs (killed or out of memory while processing it); run it alone with "
            "--debug or raise limits")


class DiskFullError(DossrError):
    """The disk under the output folder is full: the run stops; what is finished is kept."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(f"disk full writing {path}: free space and run the same command again; finished images "
                         "are kept")


def is_disk_full(error: BaseException | None) -> bool:
    """ENOSPC/EDQUOT anywhere in the chain of causes, or SQLite's SQLITE_FULL."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(error, sqlite3.Error) and (getattr(error, "sqlite_errorcode", None) == _SQLITE_FULL
                                                 or "database or disk is full" in str(error)):
            return True
        error = error.__cause__
    return False


def params_key(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def content_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Entry:
    input: str
    content_sha256: str
    params_key: str
    output: str
    status: str
    error: str | None
    crashes: int = 0

    def crash_failed(self, sha: str, key: str) -> bool:
        """Failed for bringing down runs, and still the same file under the same options."""
        return (self.status == FAILED and self.crashes >= CRASH_LIMIT and self.content_sha256 == sha
                and self.params_key == key)


CLAIMED, HELD, ORPHANED, DONE_ELSEWHERE, FAILED_ELSEWHERE, CRASH_FAILED = (
    "claimed", "held", "orphaned", "done elsewhere", "failed elsewhere", "crash failed")


@dataclass(frozen=True)
class Claim:
    """What `Journal.claim` found: CLAIMED (ours to compute), HELD (a live run has it), ORPHANED (its run died:
    counted, try it last), DONE_ELSEWHERE / FAILED_ELSEWHERE (another run finished it while this one ran) or
    CRASH_FAILED (it brought down too many runs)."""

    result: str
    may_replace: bool = False  # the output name is the batch's own (recorded before this claim)
    error: str | None = None


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=BUSY_SECONDS, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def _create(path: Path) -> None:
    """The journal file appears whole or not at all: built beside its name, then linked in (a run that linked
    first wins, and its file is as good); a disk that is already full leaves nothing."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with contextlib.closing(sqlite3.connect(temporary, isolation_level=None)) as db:
            db.execute("PRAGMA journal_mode=WAL")  # kept in the file's header
            db.execute(_SCHEMA)
        with contextlib.suppress(FileExistsError):
            link_without_clobbering(temporary, path)
    finally:
        for name in (temporary.name, temporary.name + "-wal", temporary.name + "-shm", temporary.name + "-journal"):
            with contextlib.suppress(OSError):
                (path.parent / name).unlink()


class Journal:
    def __init__(self, folder: Path, lease: float = LEASE_SECONDS, heartbeat: float = HEARTBEAT_SECONDS) -> None:
        self.path = folder / JOURNAL_NAME
        self.lease, self.heartbeat_seconds = lease, heartbeat
        self.owner = this_run()
        self.started = time.time()  # a row another run finished after this is that run's work
        made_folder = not folder.exists()
        try:
            with self._disk_full():
                folder.mkdir(parents=True, exist_ok=True)
                if not self.path.is_file():
                    _create(self.path)
                self.db = _connect(self.path)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute(_SCHEMA)
                self._add_columns()
        except BaseException:
            if made_folder:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if nothing is in it
            raise
        self._stop = threading.Event()
        self._beating: threading.Thread | None = None

    def _add_columns(self) -> None:
        """A journal from before claims gains their columns."""
        have = {row[1] for row in self.db.execute("PRAGMA table_info(jobs)")}
        for name, kind in _ADDED_COLUMNS.items():
            if name not in have:
                self.db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")

    @contextlib.contextmanager
    def _disk_full(self) -> Iterator[None]:
        try:
            yield
        except (OSError, sqlite3.Error) as error:
            if is_disk_full(error):
                raise DiskFullError(self.path) from error
            raise

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction that holds the write lock from its start, so what it reads stays true."""
        with self._disk_full():
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self.db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        """Stops the heartbeat and hands back what this run still holds (not a crash: it stopped cleanly)."""
        self._stop.set()
        if self._beating is not None:
            self._beating.join()
        self.release()
        self.db.close()

    def release(self) -> None:
        """This run's open claims back to be done again. On a full disk a checkpoint first lets the write reuse
        the WAL's space; where even that fails the claims lapse with this process, counted as one crash."""
        for attempt in range(2):
            try:
                with self._transaction():
                    self.db.execute("UPDATE jobs SET status = ?, heartbeat = NULL, updated = ? WHERE owner = ? "
                                    "AND status = ?", (INTERRUPTED, time.time(), str(self.owner), RUNNING))
                return
            except (DiskFullError, sqlite3.Error):
                if attempt:
                    return
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("PRAGMA wal_checkpoint(RESTART)")

    def get(self, input_rel: str) -> Entry | None:
        row = self.db.execute("SELECT input, content_sha256, params_key, output, status, error, crashes FROM jobs "
                              "WHERE input = ?", (input_rel,)).fetchone()
        return Entry(*row) if row else None

    def is_done(self, input_rel: str, sha: str, key: str, output: Path) -> bool:
        entry = self.get(input_rel)
        return (entry is not None and entry.status == DONE and entry.content_sha256 == sha
                and entry.params_key == key and entry.output == str(output) and output.is_file())

    def owns(self, output: Path) -> bool:
        """Did this batch write (or start writing) `output` before?"""
        return self.db.execute("SELECT 1 FROM jobs WHERE output = ?", (str(output),)).fetchone() is not None

    # ------------------------------------------------------------------------------------ claims

    def lapsed(self, owner_text: str | None, heartbeat: float | None, now: float) -> bool:
        """Has the holder of a `running` row gone (or gone quiet for longer than the lease)?"""
        if heartbeat is None or now - heartbeat > self.lease:
            return True
        owner = Owner.parse(owner_text)
        return owner is None or owner.alive() is False

    def _count_crash(self, input_rel: str, old_owner: str | None, now: float) -> int:
        """The row's run died on it: one more crash; at CRASH_LIMIT the image is failed. Returns the count."""
        (crashes,) = self.db.execute("SELECT crashes + 1 FROM jobs WHERE input = ?", (input_rel,)).fetchone()
        status, error = (FAILED, crash_reason(crashes)) if crashes >= CRASH_LIMIT else (INTERRUPTED, None)
        self.db.execute("UPDATE jobs SET crashes = ?, status = ?, error = ?, owner = ?, heartbeat = NULL, updated = ? "
                        "WHERE input = ? AND status = ? AND owner IS ?",
                        (crashes, status, error, str(self.owner), now, input_rel, RUNNING, old_owner))
        return crashes

    def reclaim_orphans(self) -> None:
        """Every `running` row whose run died is counted (once, whichever run finds it first)."""
        now = time.time()
        rows = self.db.execute("SELECT input, owner, heartbeat FROM jobs WHERE status = ?", (RUNNING,)).fetchall()
        for input_rel, owner, heartbeat in rows:
            if owner != str(self.owner) and self.lapsed(owner, heartbeat, now):
                with self._transaction():
                    row = self.db.execute("SELECT owner, heartbeat FROM jobs WHERE input = ? AND status = ?",
                                          (input_rel, RUNNING)).fetchone()
                    if row is not None and row[0] == owner and self.lapsed(*row, now):
                        self._count_crash(input_rel, owner, now)

    def claim(self, input_rel: str, sha: str, params: dict[str, Any], output: Path) -> Claim:
        """Take the image for this run, atomically against every other run on the journal."""
        key = params_key(params)
        with self._transaction():
            now = time.time()
            row = self.db.execute("SELECT status, owner, heartbeat, crashes, content_sha256, params_key, output, "
                                  "error, updated FROM jobs WHERE input = ?", (input_rel,)).fetchone()
            same = row is not None and (row[4], row[5], row[6]) == (sha, key, str(output))
            if row is not None:
                status, owner, heartbeat, crashes, *_, error, updated = row
                if status == RUNNING and owner != str(self.owner):
                    if not self.lapsed(owner, heartbeat, now):
                        return Claim(HELD)
                    crashes = self._count_crash(input_rel, owner, now)
                    return Claim(CRASH_FAILED, error=crash_reason(crashes)) if crashes >= CRASH_LIMIT else Claim(ORPHANED)
                if same and status == FAILED and crashes >= CRASH_LIMIT:
                    return Claim(CRASH_FAILED, error=error)
                if same and owner != str(self.owner) and updated >= self.started:
                    if status == DONE and output.is_file():
                        return Claim(DONE_ELSEWHERE)
                    if status == FAILED:
                        return Claim(FAILED_ELSEWHERE, error=error)
            may_replace = self.owns(output)
            kept = row[3] if row is not None and row[4] == sha and row[5] == key else 0  # a new file starts afresh
            self._put(input_rel, sha, params, output, RUNNING, crashes=kept, heartbeat=now)
        self._start_heartbeat()
        return Claim(CLAIMED, may_replace)

    def _start_heartbeat(self) -> None:
        if self._beating is None:
            self._beating = threading.Thread(target=self._beat, name="dossr-journal-heartbeat", daemon=True)
            self._beating.start()

    def _beat(self) -> None:
        """Refreshes this run's claims while the process lives; its own connection, errors ignored (a full disk
        stops the run from the main thread)."""
        with contextlib.closing(_connect(self.path)) as db:
            while not self._stop.wait(self.heartbeat_seconds):
                with contextlib.suppress(sqlite3.Error):
                    db.execute("UPDATE jobs SET heartbeat = ? WHERE owner = ? AND status = ?",
                               (time.time(), str(self.owner), RUNNING))

    # ------------------------------------------------------------------------------------ results

    def _put(self, input_rel: str, sha: str, params: dict[str, Any], output: Path, status: str,
             error: str | None = None, seconds: float | None = None, crashes: int | None = None,
             heartbeat: float | None = None) -> None:
        """One row written; `crashes` None keeps the count. A failure never takes a row another live run holds."""
        self.db.execute(
            "INSERT INTO jobs (input, content_sha256, params_key, params, output, status, error, seconds, updated, "
            "owner, heartbeat, crashes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(input) DO UPDATE SET "
            "content_sha256=excluded.content_sha256, params_key=excluded.params_key, params=excluded.params, "
            "output=excluded.output, status=excluded.status, error=excluded.error, seconds=excluded.seconds, "
            "updated=excluded.updated, owner=excluded.owner, heartbeat=excluded.heartbeat, "
            "crashes=COALESCE(?, jobs.crashes) WHERE excluded.status != 'failed' OR jobs.status != 'running' "
            "OR jobs.owner = excluded.owner",
            (input_rel, sha, params_key(params), json.dumps(params, sort_keys=True), str(output), status, error,
             seconds, time.time(), str(self.owner), heartbeat, crashes or 0, crashes),
        )

    def done(self, input_rel: str, sha: str, params: dict[str, Any], output: Path, seconds: float) -> None:
        with self._disk_full():
            self._put(input_rel, sha, params, output, DONE, seconds=seconds)

    def failed(self, input_rel: str, sha: str, params: dict[str, Any], output: Path, error: str) -> None:
        with self._disk_full():
            self._put(input_rel, sha, params, output, FAILED, error=error)

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())


__all__ = ["CLAIMED", "CRASH_FAILED", "CRASH_LIMIT", "DONE_ELSEWHERE", "FAILED_ELSEWHERE", "HELD", "JOURNAL_NAME",
           "ORPHANED", "Claim", "DiskFullError", "Entry", "Journal", "content_sha256", "crash_reason", "is_disk_full",
           "params_key"]

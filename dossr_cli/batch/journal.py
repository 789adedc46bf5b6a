"""The batch job journal: one SQLite file in the output folder.

Each input (by its path relative to the batch root) has its content hash, the
parameters that decide its pixels, its output path and a status. A re-run skips what is
done with the same content and parameters, retries what failed, and redoes what changed;
an entry left `running` by a killed run is simply run again. The journal also records
which output files the batch itself wrote, so a redo may replace those (and only those)
without --overwrite.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JOURNAL_NAME = ".dossr-journal.sqlite"
DONE, FAILED, RUNNING = "done", "failed", "running"

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
    updated REAL NOT NULL
)
"""


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


class Journal:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / JOURNAL_NAME
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def get(self, input_rel: str) -> Entry | None:
        row = self.db.execute("SELECT input, content_sha256, params_key, output, status, error FROM jobs "
                              "WHERE input = ?", (input_rel,)).fetchone()
        return Entry(*row) if row else None

    def is_done(self, input_rel: str, sha: str, key: str, output: Path) -> bool:
        entry = self.get(input_rel)
        return (entry is not None and entry.status == DONE and entry.content_sha256 == sha
                and entry.params_key == key and entry.output == str(output) and output.is_file())

    def owns(self, output: Path) -> bool:
        """Did this batch write (or start writing) `output` before?"""
        return self.db.execute("SELECT 1 FROM jobs WHERE output = ?", (str(output),)).fetchone() is not None

    def _put(self, input_rel: str, sha: str, params: dict[str, Any], output: Path, status: str,
             error: str | None = None, seconds: float | None = None) -> None:
        self.db.execute(
            "INSERT INTO jobs (input, content_sha256, params_key, params, output, status, error, seconds, updated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(input) DO UPDATE SET content_sha256=excluded.content_sha256,"
            " params_key=excluded.params_key, params=excluded.params, output=excluded.output, status=excluded.status,"
            " error=excluded.error, seconds=excluded.seconds, updated=excluded.updated",
            (input_rel, sha, params_key(params), json.dumps(params, sort_keys=True), str(output), status, error,
             seconds, time.time()),
        )

    def running(self, input_rel: str, sha: str, params: dict[str, Any], output: Path) -> None:
        self._put(input_rel, sha, params, output, RUNNING)

    def done(self, input_rel: str, sha: str, params: dict[str, Any], output: Path, seconds: float) -> None:
        self._put(input_rel, sha, params, output, DONE, seconds=seconds)

    def failed(self, input_rel: str, sha: str, params: dict[str, Any], output: Path, error: str) -> None:
        self._put(input_rel, sha, params, output, FAILED, error=error)

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())

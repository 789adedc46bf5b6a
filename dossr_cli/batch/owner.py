"""Who holds a journal claim, and whether that holder can still be working on it.

An owner is this machine (hostname, boot and pid namespace, so a reboot or another
container is another machine), a process id, that process's start time as the kernel
counts it (so a reused pid is not taken for the owner) and a random run id. Only a
process on this machine can be checked directly; a claim from elsewhere is judged by
its lease (journal.py).
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

_SEPARATOR = "|"


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _machine() -> str:
    namespace = ""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        pass
    parts = (socket.gethostname(), _read("/proc/sys/kernel/random/boot_id"), namespace)
    return "/".join(part.replace(_SEPARATOR, "_") for part in parts)


def process_start(pid: int) -> str:
    """The process's start time in clock ticks after boot (Linux /proc); "" where it cannot be read."""
    stat = _read(f"/proc/{pid}/stat")
    fields = stat.rpartition(")")[2].split()  # the command name in (...) may hold spaces
    return fields[19] if len(fields) > 19 else ""  # field 22 of stat, counted after the name


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # there, but another user's
        return True
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Owner:
    machine: str
    pid: int
    started: str
    run: str

    def __str__(self) -> str:
        return _SEPARATOR.join((self.machine, str(self.pid), self.started, self.run))

    @classmethod
    def parse(cls, text: str | None) -> Owner | None:
        parts = (text or "").split(_SEPARATOR)
        if len(parts) != 4 or not parts[1].isdigit():
            return None
        return cls(parts[0], int(parts[1]), parts[2], parts[3])

    def alive(self) -> bool | None:
        """True or False for a process on this machine; None (cannot tell) for one elsewhere."""
        if self.machine != _machine():
            return None
        if not _pid_exists(self.pid):
            return False
        return not self.started or process_start(self.pid) in ("", self.started)


def this_run() -> Owner:
    """A fresh owner for one journal opened by this process."""
    return Owner(_machine(), os.getpid(), process_start(os.getpid()), secrets.token_hex(8))


__all__ = ["Owner", "process_start", "this_run"]

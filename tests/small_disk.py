"""A real full disk for tests, without root: a tiny tmpfs mounted in a user and mount namespace.

`unshare --user --map-root-user --mount` gives the child its own mount table, where it may mount a
tmpfs of a few hundred KiB over a test folder; writes there fail with a real ENOSPC and SQLite's real
SQLITE_FULL. The mount (and what is on it) goes when the child exits, so the child copies what the
test must look at into ordinary folders first. Where the kernel or the container forbids user
namespaces, the tests that need this are skipped with that reason.
"""

from __future__ import annotations

import functools
import shlex
import shutil
import subprocess

import pytest


@functools.cache
def why_not_available() -> str | None:
    """None where a namespaced tmpfs can be mounted here, else the reason it cannot."""
    if shutil.which("unshare") is None:
        return "no unshare(1) on this machine"
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs \"$d\" && umount \"$d\" && rmdir \"$d\""],
                           capture_output=True, text=True, timeout=60, check=False)
    if probe.returncode != 0:
        return f"cannot mount a tmpfs in a user namespace here: {probe.stderr.strip() or probe.returncode}"
    return None


def require_small_disk() -> None:
    reason = why_not_available()
    if reason is not None:
        pytest.skip(reason)


def run_with_small_disk(mount_point: str, size_kib: int, script: str, env: dict[str, str] | None = None,
                        timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`script` (bash) with a `size_kib` tmpfs mounted over `mount_point`, which must exist and be empty."""
    require_small_disk()
    mount = f"mount -t tmpfs -o size={size_kib}k,mode=0777 tmpfs {shlex.quote(mount_point)}\n"
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", mount + script],
                          capture_output=True, text=True, timeout=timeout, env=env, check=False)


# Fill the disk under a folder but `$1` KiB (0: all of it); the filler is removed again by `rm`.
FILL = """
fill() {
    rm -f "$2/.filler"
    dd if=/dev/zero of="$2/.filler" bs=1k 2>/dev/null
    free_kib=$1
    if [ "$free_kib" -gt 0 ]; then
        size=$(stat -c %s "$2/.filler")
        truncate -s $((size - free_kib * 1024)) "$2/.filler"
    fi
}
"""

__all__ = ["FILL", "require_small_disk", "run_with_small_disk", "why_not_available"]

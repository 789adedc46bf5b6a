"""All-or-nothing writes: a temporary file beside the target, fsync, then one rename or link."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path

from dossr_cli.imageio.common import ImageWriteError, one_line


def write_atomic(path: str | Path, data: bytes, overwrite: bool = False) -> None:
    """All or nothing under `path`: a temporary file in the same folder, fsync, then one rename/link.

    Without `overwrite` the final step is os.link, which fails if the name exists, so of two
    processes racing for one name exactly one wins and the other's file is never clobbered.
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise ImageWriteError(f"cannot write '{path}': the folder '{folder}' does not exist; create it first")
    if path.is_dir():
        raise ImageWriteError(f"cannot write '{path}': it is a folder; give a file name")
    if not overwrite and os.path.lexists(path):
        raise ImageWriteError(f"'{path}' already exists; pass --overwrite to replace it")

    descriptor, temporary = _create_temporary(path)
    placed = False
    try:
        try:
            _write_all(descriptor, data, path)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        if overwrite:
            os.replace(temporary, path)
            placed = True
        else:
            link_without_clobbering(temporary, path)
        _fsync_folder(folder)
    except FileExistsError as error:
        raise ImageWriteError(f"'{path}' already exists; pass --overwrite to replace it") from error
    except OSError as error:
        if isinstance(error, ImageWriteError):
            raise
        raise ImageWriteError(f"cannot write '{path}': {_describe_os_error(error)}") from error
    finally:
        if not placed:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def _create_temporary(path: Path) -> tuple[int, Path]:
    """Open a fresh hidden file beside `path`; mode 0o666 lets the umask decide, like a plain open."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    old_mode = path.stat().st_mode & 0o777 if path.is_file() else None  # an overwrite keeps permissions
    mode = 0o666 if old_mode is None else old_mode
    for _ in range(8):
        temporary = path.with_name(f".{path.name[:200]}.{secrets.token_hex(6)}.tmp")
        try:
            descriptor = os.open(temporary, flags, mode)
        except FileExistsError:
            continue
        except OSError as error:
            raise ImageWriteError(f"cannot write in the folder '{path.parent}': {_describe_os_error(error)}") from error
        if old_mode is not None:
            with contextlib.suppress(OSError):
                os.chmod(temporary, old_mode)  # exactly the old bits, whatever the umask
        return descriptor, temporary
    raise ImageWriteError(f"cannot create a temporary file beside '{path}'; clear stale .tmp files there")


def _write_all(descriptor: int, data: bytes, path: Path) -> None:
    view = memoryview(data)
    while view:
        written = os.write(descriptor, view)
        if written <= 0:
            raise OSError(errno.EIO, f"short write to a temporary file for {path}")
        view = view[written:]


def link_without_clobbering(temporary: Path, path: Path) -> None:
    """`temporary` appears under `path` whole, or FileExistsError if something is already there."""
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise
    except OSError as error:
        # Filesystems without hard links (FAT, exFAT, some network shares): check, then rename.
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "exists", str(path)) from error
        os.rename(temporary, path)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; folders that cannot be fsynced (Windows, some shares) are skipped."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _describe_os_error(error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        return "the disk is full; free some space"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "permission denied; choose a folder you may write to"
    if error.errno == errno.EROFS:
        return "the filesystem is read-only; choose another folder"
    return one_line(error)


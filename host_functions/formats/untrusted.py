"""Opening files a tenant may have written: regular files only, never through a symbolic link.

An operator binds a tenant's adapter as a file or a folder, and the tenant may control what is in it.
A symbolic link there could lead anywhere on the host (another tenant's private weights), so a bound
file is opened with O_NOFOLLOW, and a folder's files are opened by their bare names relative to the
folder's own descriptor (itself opened with O_NOFOLLOW): no path the kernel would resolve through a
link, no component outside the folder. Anything but a regular file (a link, a FIFO that would block
the open, a device) is refused, and what is read whole is read up to a bound.

Hard links are not refused: making one needs read access to its target already (Linux's
protected_hardlinks), so it reaches nothing its maker could not read.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

_READ = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC  # O_NONBLOCK: opening a FIFO must not wait for a writer


def open_file(path: Path, follow_links: bool = False) -> BinaryIO:
    """The regular file at `path` for reading; its last component is not followed if it is a link
    (unless `follow_links`). Raises OSError, which `reason` words."""
    return _regular(os.open(path, _READ | (0 if follow_links else os.O_NOFOLLOW)))


@contextmanager
def folder(path: Path) -> Iterator[int]:
    """A descriptor of the folder at `path` (not a link to one) for `open_in`; raises OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def open_in(folder_fd: int, name: str) -> BinaryIO:
    """The regular file `name` directly inside the folder (not a link); raises OSError."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"{name!r} is not a plain file name")  # only Realm's own constant names come here
    return _regular(os.open(name, _READ | os.O_NOFOLLOW, dir_fd=folder_fd))


def read_bounded(f: BinaryIO, limit: int) -> bytes:
    """The whole file, or OSError(EFBIG) if it holds more than `limit` bytes."""
    if os.fstat(f.fileno()).st_size > limit:
        raise OSError(errno.EFBIG, f"larger than the limit of {limit} bytes")
    data = f.read(limit + 1)
    if len(data) > limit:  # grown since fstat
        raise OSError(errno.EFBIG, f"larger than the limit of {limit} bytes")
    return data


def size_of(f: BinaryIO) -> int:
    return os.fstat(f.fileno()).st_size


def reason(exc: OSError) -> str:
    """Why a file could not be opened, in words that name no path."""
    if exc.errno == errno.ELOOP:
        return "is a symbolic link, which Realm does not follow"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return "does not exist"
    if exc.errno == errno.EFBIG:
        return f"is {exc.strerror}"
    return f"cannot be read ({exc.strerror or type(exc).__name__})"


def _regular(fd: int) -> BinaryIO:
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise

"""Atomic file writes: every output is written to a temporary name beside its target, then renamed.

An interrupted run therefore leaves either the previous file or the complete new one, never a
half-written file that a resumed run would mistake for a finished one. A write that the filesystem
refuses (disk full, no permission, read-only, the folder gone) becomes one `WriteError` naming the
target and the reason, with the temporary removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

# What a filesystem answers when it cannot take a write; other OSErrors are not about the disk.
WRITE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.EIO, errno.EFBIG}
)


class WriteError(OSError):
    """An output that could not be written; the message names the file and the filesystem's reason."""

    def __str__(self) -> str:
        return self.args[0]


def write_error(err: OSError, target: str | os.PathLike) -> WriteError:
    reason = err.strerror or str(err)
    code = errno.errorcode.get(err.errno or 0, "")
    hint = " (the folder was removed while writing?)" if err.errno == errno.ENOENT else ""
    return WriteError(
        f"{target}: cannot write: {reason}{f' [{code}]' if code else ''}{hint}; nothing was left half-written"
    )


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto `target` only on success."""
    target = Path(target)
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        yield tmp
        os.replace(tmp, target)
    except OSError as err:
        if isinstance(err, WriteError) or err.errno not in WRITE_ERRNOS:
            raise
        raise write_error(err, target) from None
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)

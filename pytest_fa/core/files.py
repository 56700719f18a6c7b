"""Writing a file so that it is either the new content in full or left as it was."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pytest_fa.errors import FAError


class WriteError(FAError, OSError):
    """A file could not be written (disk full, read-only folder, ...); the old file is unchanged."""


def write_atomically(path: str | os.PathLike[str], data: str | bytes | Callable[[BinaryIO], object]) -> Path:
    """Write ``data`` (UTF-8 text, bytes, or a function writing into the open binary file) to ``path``
    (a symlink's target), its folder created, through a flushed temporary file renamed over it; on
    failure ``path`` is left as it was (an ``OSError`` becomes a :class:`WriteError`). Returns the path."""
    path = Path(os.path.realpath(path))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as handle:  # "x": created here, with the umask's permissions
            if callable(data):
                data(handle)
            else:
                handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            kept = "the previous file is unchanged" if path.exists() else "nothing was written"
            error = WriteError(f"cannot write {path}: {exc.strerror or exc}; {kept}")
            error.errno = exc.errno
            raise error from exc
        raise
    return path

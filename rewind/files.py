"""Small files written whole or not at all, and read back with a one-line error when they are damaged.

A plain `write_text` on a full disk truncates the file first and then fails, leaving it empty; every reader after
that fails too. Here the text goes to a temp file beside the target, is fsynced, then renamed over it: the target
is always the old file or the new one.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from .errors import RewindError


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Replace `path` by `data` in one step; on failure (disk full, no permission) the old file stays as it was."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.parent / f".{path.name}.tmp-{secrets.token_hex(4)}"
    try:
        # os.open, not mkstemp: the file gets the usual umask-derived mode, not 0600.
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)  # the rename itself survives a power cut
    except OSError as exc:
        raise RewindError(
            f"{path}: cannot write ({exc.strerror or exc}); free space or fix permissions and rerun "
            f"the same command (the previous {path.name}, if any, is kept)"
        ) from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Strict JSON: a NaN or infinity is refused (ValueError), never written as a bare NaN."""
    write_atomic(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike, what: str) -> dict:
    """The JSON object in `path` (`what` it is, for the message: e.g. "sweep record"); damage is a one-line error."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise RewindError(
            f"{path}: unreadable JSON{where}: the {what} is damaged (cut short by a full disk or a crash?); "
            f"remove it and rerun the command that wrote it"
        ) from None
    except OSError as exc:
        raise RewindError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from exc
    if not isinstance(data, dict):
        raise RewindError(
            f"{path}: expected a JSON object, got {type(data).__name__}: the {what} is damaged; remove it and "
            f"rerun the command that wrote it"
        )
    return data

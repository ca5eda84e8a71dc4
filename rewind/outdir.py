"""Where a command writes its output dir: never over, around or inside what it reads; a name that fits; and a
hidden temporary dir next to it, published by one rename, that a killed run leaves for the next run to remove.

A temporary dir is `.<name>.tmp-XXXXXXXX`, flock-ed through a lock file inside it for as long as its writer lives:
the kernel drops the lock when the writer dies (kill -9 included), so a dir whose lock can be taken is stale.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

from .errors import RewindError

TMP = ".tmp-"
LOCK = ".rewind-writing.lock"
_SUFFIX = 8  # the random part of a mkdtemp name
_DECORATION = len(".") + len(TMP) + _SUFFIX  # what a temporary (or replaced `.<name>.old-*`) dir adds to a name


def check_spares_inputs(out, inputs: dict[str, object], flag: str = "--out") -> None:
    """RewindError unless `out` is neither one of `inputs` ({flag: path}, None or absent paths skipped) nor contains
    one nor lies inside one, symlinks resolved. Holds whatever --force says: replacing `out` must never touch an
    input."""
    where = Path(out).resolve()
    for name, path in inputs.items():
        if path is None or not Path(path).exists():
            continue  # a hub id, or an input that its own check refuses
        source = Path(path).resolve()
        if where == source:
            how = f"is the {name} dir"
        elif where in source.parents:
            how = f"contains the {name} dir {path}"
        elif source in where.parents:
            how = f"lies inside the {name} dir {path}"
        else:
            continue
        raise RewindError(
            f"{flag} {out} {how}: rewind never writes over its inputs (not even with --force); "
            f"choose an {flag} outside them"
        )


def check_name(out, flag: str = "--out") -> None:
    """RewindError unless every dir to create on the way to `out` has a name this filesystem takes, `out`'s own name
    with room for its temporary dir's decoration."""
    path = Path(os.path.abspath(out))
    existing = path
    while not os.path.exists(existing):  # False for a name too long too, where Path.exists raises
        existing = existing.parent
    name_max = _pathconf(existing, "PC_NAME_MAX", 255)
    for part in path.parts[len(existing.parts) :]:
        room = name_max - (_DECORATION if part == path.name else 0)
        if len(os.fsencode(part)) > room:
            short = part if len(part) <= 24 else part[:20] + "..."
            raise RewindError(
                f"{flag} {short}: name too long ({len(os.fsencode(part))} bytes; at most {room} "
                f"in {existing}): choose a shorter {flag}"
            )
    if len(os.fsencode(str(path))) + _DECORATION >= _pathconf(existing, "PC_PATH_MAX", 4096):
        raise RewindError(f"{flag}: path too long ({len(os.fsencode(str(path)))} bytes): choose a shorter {flag}")


def check_out(out: Path, force: bool) -> None:
    """`out` can be written: a name that fits, absent or empty (or --force), under a writable dir. Creates nothing."""
    check_name(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise RewindError(f"--out {out} exists and is not empty: pass --force to replace it")
    parent = out.resolve().parent
    existing = parent
    while not existing.exists():  # the dirs write() will create: the nearest existing one must take them
        existing = existing.parent
    if not existing.is_dir():
        raise RewindError(f"--out {out}: {existing} is a file, not a directory; choose another --out")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as exc:
        raise RewindError(f"--out {out}: cannot write in {existing} ({exc.strerror}); choose another --out") from exc


def _pathconf(path: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(path, name)
    except (OSError, ValueError):
        return default


class Scratch:
    """A new locked temporary dir for `out` (created in `parent`, which must exist); stale ones there go first.

    Use as a context manager: `publish()` renames it to `out` (an old `out` is swapped away and removed after);
    leaving the block unpublished removes it. The lock is held until after the rename, so no cleaner ever takes a
    dir that is still being written or moved into place.
    """

    def __init__(self, parent: Path, name: str):
        remove_stale(parent)
        self.path = Path(tempfile.mkdtemp(prefix=f".{name}{TMP}", dir=parent))
        self.published, self._fd = False, None
        try:
            self._lock()
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise

    def _lock(self) -> None:
        # Locked under another name, then renamed: a cleaner sees the lock file only once it is held.
        fresh = self.path / (LOCK + ".new")
        fd = os.open(fresh, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            os.close(fd)  # a filesystem without locks: no lock file, so no cleaner ever takes this dir
            fresh.unlink()
            return
        self._fd = fd
        fresh.rename(self.path / LOCK)

    def __enter__(self) -> Scratch:
        return self

    def publish(self, out: Path) -> None:
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{self.path.name[-_SUFFIX:]}")
            out.rename(old)
        try:
            self.path.rename(out)
        except OSError:
            if old is not None:  # put the old dir back: a failed --force replaces nothing
                old.rename(out)
            raise
        self.published = True
        (out / LOCK).unlink(missing_ok=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() and not old.is_symlink() else old.unlink()

    def __exit__(self, *exc) -> None:
        if not self.published:
            shutil.rmtree(self.path, ignore_errors=True)
        if self._fd is not None:
            os.close(self._fd)  # releases the lock


def remove_stale(parent: Path) -> None:
    """Remove the temporary dirs in `parent` that no live writer holds. A dir without rewind's lock file (another
    program's, or one a writer is still creating) is never touched."""
    for candidate in parent.glob(f".*{TMP}*"):
        try:
            fd = os.open(candidate / LOCK, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live writer holds it
        else:
            shutil.rmtree(candidate, ignore_errors=True)
        finally:
            os.close(fd)

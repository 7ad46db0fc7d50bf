"""Atomic file and folder writes: a crash or a full disk leaves the old file or nothing, never half a file.

An output path is written atomically only when it is (or will be) a regular file: a symlink is
followed and its target replaced (the link stays), a device, FIFO or socket is written straight to
(:func:`output_target`), and :func:`refuse_inputs` refuses an output that is an input of the same run.

Temporaries carry their writer's PID (``.NAME.PID.*.tmp``); a later writer beside them removes
those whose process is gone (a ``kill -9`` leaves them). Writers of one folder serialize on
:func:`lock`, an ``fcntl.flock`` on ``.NAME.lock`` beside it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

from edgekit.errors import EdgekitError, InputError, UsageError

log = logging.getLogger(__name__)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _explain(exc: OSError, path: Path) -> EdgekitError:
    if exc.errno == errno.ENOSPC:
        return EdgekitError(f"disk full while writing {path}; nothing was written")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR):
        return InputError(f"cannot write {path}: {exc.strerror}")
    return EdgekitError(f"cannot write {path}: {exc.strerror or exc}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists (ours or another user's)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(folder: str | os.PathLike, pattern: str) -> list[Path]:
    """Remove entries of ``folder`` matching the regex ``pattern`` whose group ``pid`` names a dead process."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in Path(folder).iterdir():
            m = re.fullmatch(pattern, entry.name)
            if m is None or pid_alive(int(m.group("pid"))):
                continue
            with contextlib.suppress(OSError):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
                removed.append(entry)
    if removed:
        log.info("removed %d stale temporary file(s) of killed runs: %s", len(removed), ", ".join(p.name for p in removed))
    return removed


def _clean_beside(path: Path) -> None:
    name = re.escape(path.name)
    clean_stale(path.parent, rf"\.{name}\.(?:old-)?(?P<pid>\d+)(?:\..*\.tmp)?")


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    """A scratch folder ``/tmp/PREFIX-PID-*`` removed on exit; those of dead processes are removed first."""
    base = Path(tempfile.gettempdir())
    clean_stale(base, rf"{re.escape(prefix)}-(?P<pid>\d+)-.*")
    with tempfile.TemporaryDirectory(prefix=f"{prefix}-{os.getpid()}-") as tmp:
        yield Path(tmp)


_held: dict = {}
_held_guard = threading.Lock()


def _lock_path(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"


@contextlib.contextmanager
def lock(path: str | os.PathLike, wait: float = 10.0, what: str | None = None) -> Iterator[None]:
    """Hold the writer's lock of ``path`` (``.NAME.lock`` beside it): wait up to ``wait`` s, then fail.

    Re-entrant within a thread (another thread waits like another process); the lock file is
    removed on release (a waiter re-checks that it locked the file on disk).
    """
    import fcntl

    path = Path(path).absolute()
    key = (str(path), threading.get_ident())
    with _held_guard:
        if key in _held:
            _held[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    lpath = _lock_path(path)
    deadline = time.monotonic() + wait
    try:
        lpath.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _explain(exc, path) from exc
    while True:
        try:
            fd = os.open(lpath, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        except OSError as exc:
            raise _explain(exc, lpath) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            if time.monotonic() >= deadline:
                raise EdgekitError(
                    f"{what or path} is in use by {f'PID {holder}' if holder else 'another process'} "
                    f"(lock {lpath}); try again when it has finished"
                ) from None
            time.sleep(0.05)
            continue
        try:  # the holder before us may have removed the file we locked: lock the one on disk
            same = os.fstat(fd).st_ino == os.stat(lpath).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        pass
    with _held_guard:
        _held[key] = 1
    try:
        yield
    finally:
        with _held_guard:
            del _held[key]
        with contextlib.suppress(OSError):
            os.unlink(lpath)
        os.close(fd)


def locked(what: str, wait: float = 0.0):
    """Decorator: the call holds :func:`lock` on its first argument (a path), for read-modify-write writers."""

    def decorate(fn):
        @functools.wraps(fn)
        def call(path, *args, **kwargs):
            with lock(path, wait, what=f"{what} {path}"):
                return fn(path, *args, **kwargs)

        return call

    return decorate


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def output_target(path: str | os.PathLike) -> tuple[Path, bool]:
    """Where output ``path`` is written and whether atomically (a temporary renamed over it).

    A symlink is followed (its target is written, the link kept); an existing device, FIFO or
    socket is written straight to (``False``); a regular file or a new name atomically (``True``).
    InputError for a folder.
    """
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return path, True
    except OSError as exc:
        raise _explain(exc, path) from exc
    if stat.S_ISDIR(mode):
        raise InputError(f"cannot write {path}: it is a folder")
    return path, stat.S_ISREG(mode)


FIFO_WAIT = 5.0  # seconds a FIFO output waits for its reader


def open_special(path: Path) -> int:
    """A write descriptor on a device or FIFO ``path`` (no truncation; a FIFO waits ``FIFO_WAIT`` s for a reader)."""
    deadline = time.monotonic() + FIFO_WAIT
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY)
            break
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise _explain(exc, path) from exc
            if time.monotonic() >= deadline:
                raise InputError(f"cannot write {path}: it is a FIFO that nobody reads (waited {FIFO_WAIT:g} s)") from exc
            time.sleep(0.05)
    os.set_blocking(fd, True)
    return fd


def write_special(path: Path, data: bytes) -> None:
    """Write ``data`` straight to the device or FIFO ``path``."""
    fd = open_special(path)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as exc:
        raise _explain(exc, path) from exc
    finally:
        os.close(fd)


def _identity(path: str) -> tuple | str | None:
    """A file's or folder's (device, inode), a new name's real path; None for a device or FIFO."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return os.path.realpath(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) else None


def refuse_inputs(outputs: dict, inputs: dict) -> None:
    """UsageError when an output is an input of the same run or another output (``/dev/null`` twice, or
    one input read twice, is fine).

    Both map an option name (``--json``) to a path; None, ``-`` and inputs that do not exist are skipped.
    """
    seen: dict = {}
    for role, value in [*inputs.items(), *outputs.items()]:
        if value is None or str(value) == "-" or (role in inputs and not os.path.exists(str(value))):
            continue
        key = _identity(str(value))
        if key is None:
            continue
        if key in seen and not (role in inputs and seen[key][0] in inputs):  # one input read twice is fine
            first, where = seen[key]
            why = "it would destroy the input" if first in inputs else "give each output its own file"
            raise UsageError(f"{role} {value} is the same path as {first} {where}; {why}")
        seen[key] = (role, value)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces ``path`` in one rename (see :func:`output_target`:
    a symlink's target is replaced, a device or FIFO is written straight to from the temporary)."""
    path, atomic = output_target(path)
    if not atomic:
        with temp_dir("edgekit-out") as tmp:
            yield tmp / path.name
            write_special(path, (tmp / path.name).read_bytes() if (tmp / path.name).exists() else b"")
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _clean_beside(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise _explain(exc, path) from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, mode if mode is not None else 0o666 & ~_umask())
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise _explain(exc, path) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def write_bytes(path: str | os.PathLike, data: bytes, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path, mode) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, mode: int | None = None) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"), mode)


def write_json(path: str | os.PathLike, obj, mode: int | None = None) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n", mode)


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy ``src`` to ``dst`` atomically."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


def check_output_dir(path: str | os.PathLike, force: bool) -> Path:
    """Refuse an existing output path unless ``force``; return it as a Path."""
    path = Path(path)
    if path.exists() and not force:
        raise InputError(f"{path} already exists; pass --force to replace it")
    return path


def check_writable(path: str | os.PathLike) -> Path:
    """Raise now (before a long job) unless a file can be written at ``path``: its folder is made and probed."""
    path, atomic = output_target(path)
    if not atomic:
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise _explain(exc, path) from exc
    return path


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = False, wait: float = 10.0) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it becomes ``path``.

    An existing ``path`` is refused unless ``force``; with ``force`` it is replaced only once the
    new folder is complete, so a failure keeps the old one. Writers of one ``path`` serialize on
    :func:`lock` (a second one waits up to ``wait`` seconds, then fails naming the holder).
    """
    path = check_output_dir(path, force)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _explain(exc, path) from exc
    with lock(path, wait):
        path = check_output_dir(path, force)
        try:
            _clean_beside(path)
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
            os.chmod(tmp, 0o777 & ~_umask())
        except OSError as exc:
            raise _explain(exc, path) from exc
        try:
            yield tmp
            old = None
            if path.exists():
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.replace(path, old)
            os.replace(tmp, path)
            _fsync_dir(path.parent)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        except OSError as exc:
            raise _explain(exc, path) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, or of a folder's relative file names and contents (a SavedModel)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            h.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()

"""A full disk fails the *write*, with the previous file in place: the previous file survives, whole.

Three ways to make the write itself fail, from the most real to the least privileged:
a size-limited tmpfs (ENOSPC from the kernel; needs mount rights, as root here and in CI),
RLIMIT_FSIZE in a child process (EFBIG from the kernel; no privilege), and a writer that puts half
the data on disk and then raises ENOSPC (no privilege, no child).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from edgekit import atomic
from edgekit.errors import EdgekitError

OLD = b"previous contents\n" * 8
BIG = b"x" * 256 * 1024  # four times the tmpfs below


@contextlib.contextmanager
def small_disk(path: Path):
    """A 64 KiB tmpfs at ``path``; skips where this process may not mount one."""
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)], capture_output=True,
                          text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'not root'}); "
                    "test_write_limit_in_a_child and test_half_written_then_enospc cover it without one")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


WRITERS = {
    "write_bytes": lambda path, src: atomic.write_bytes(path, BIG),
    "write_json": lambda path, src: atomic.write_json(path, {"big": BIG.decode()}),
    "copy_file": lambda path, src: atomic.copy_file(src, path),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_full_tmpfs_fails_the_write_and_keeps_the_previous_file(tmp_path, writer):
    src = tmp_path / "big.bin"
    src.write_bytes(BIG)
    with small_disk(tmp_path / "disk") as disk:
        out = disk / "model.onnx"
        out.write_bytes(OLD)
        with pytest.raises(EdgekitError, match=rf"disk full while writing {out}; nothing was written"):
            WRITERS[writer](out, src)
        assert out.read_bytes() == OLD
        assert _left(disk) == ["model.onnx"]  # no temporary left to fill the disk further


def test_full_tmpfs_in_a_new_folder_keeps_the_previous_folder(tmp_path):
    with small_disk(tmp_path / "disk") as disk:
        out = disk / "bundle"
        out.mkdir()
        (out / "edgekit.json").write_bytes(OLD)
        with pytest.raises(EdgekitError, match="disk full while writing"):
            with atomic.atomic_dir(out, force=True) as tmp:
                (tmp / "edgekit.json").write_bytes(b"{}")
                (tmp / "model.onnx").write_bytes(BIG)
        assert _left(out) == ["edgekit.json"] and (out / "edgekit.json").read_bytes() == OLD
        assert _left(disk) == ["bundle"]


def test_write_limit_in_a_child_keeps_the_previous_file(tmp_path):
    """RLIMIT_FSIZE: the kernel refuses the write past 64 KiB (EFBIG), no privilege needed."""
    out = tmp_path / "model.onnx"
    out.write_bytes(OLD)
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))\n"
        "from edgekit import atomic\n"
        "from edgekit.errors import EdgekitError\n"
        "try:\n"
        "    atomic.write_bytes(sys.argv[1], b'x' * 262144)\n"
        "except EdgekitError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(1)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1, proc
    assert f"cannot write {out}: File too large" in proc.stdout, proc
    assert out.read_bytes() == OLD and _left(tmp_path) == ["model.onnx"]


def _half_then_enospc(real):
    def write(self, data):
        real(self, data[: len(data) // 2])  # half reaches the temporary ...
        raise OSError(errno.ENOSPC, "No space left on device")  # ... then the disk is full

    return write


def test_half_written_then_enospc_keeps_the_previous_file(tmp_path, monkeypatch):
    out = tmp_path / "edgekit.json"
    out.write_bytes(OLD)
    monkeypatch.setattr(Path, "write_bytes", _half_then_enospc(Path.write_bytes))
    with pytest.raises(EdgekitError, match=rf"disk full while writing {out}; nothing was written"):
        atomic.write_json(out, {"models": {}})
    assert out.read_bytes() == OLD and _left(tmp_path) == ["edgekit.json"]


def test_half_copied_then_enospc_keeps_the_previous_file(tmp_path, monkeypatch):
    src, out = tmp_path / "src.onnx", tmp_path / "model.onnx"
    src.write_bytes(BIG)
    out.write_bytes(OLD)
    real_copy = shutil.copyfile

    def copyfile(a, b):
        real_copy(a, b)
        with open(b, "r+b") as f:
            f.truncate(len(BIG) // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.shutil, "copyfile", copyfile)
    with pytest.raises(EdgekitError, match="disk full"):
        atomic.copy_file(src, out)
    assert out.read_bytes() == OLD and _left(tmp_path) == ["model.onnx", "src.onnx"]

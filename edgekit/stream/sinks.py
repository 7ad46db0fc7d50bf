"""Where results go: JSON lines, an annotated video, a window (and the HTTP server in server.py).

A sink has ``open(info)`` (called before the source opens, so a bad path fails first),
``write(result)`` per frame and ``close()``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import sys
from pathlib import Path

from edgekit.atomic import open_special, output_target, pid_alive
from edgekit.errors import DeviceError, EdgekitError, InputError, UsageError

log = logging.getLogger(__name__)

VIDEO_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
KILL_SAFE = (".mkv", ".avi")  # containers still readable after the writer was killed


def _writable(path: Path) -> None:
    """Raise InputError unless a file can be created at ``path``."""
    parent = path.parent
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a folder")
    if not parent.is_dir():
        raise InputError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"cannot write {path}: permission denied")


def _write_error(exc: OSError, path: Path, frames: int, regular: bool = True) -> EdgekitError:
    why = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    return EdgekitError(f"cannot write {path}: {why} (after {frames} frames)" + (f"; {_kept(path)}" if regular else ""))


def _kept(path: Path) -> str:
    return f"the previous {path.name} is kept" if path.exists() else f"{path.name} was not written"


class _Partial:
    """The hidden file ``.STEM.PID.partial.EXT`` a sink writes beside ``path``, renamed over it when complete.

    Partial files of killed runs (their PID is gone) are dealt with when the next sink opens:
    ``recover(file)`` returns True when the file holds something worth keeping, which is then
    renamed to ``STEM.interrupted-PID.EXT`` (and logged); the others are removed.
    """

    def __init__(self, path: Path):
        self.path = path
        self.file = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")

    def clean_stale(self, recover) -> None:
        pattern = re.compile(rf"\.{re.escape(self.path.stem)}\.(\d+)\.partial{re.escape(self.path.suffix)}")
        for entry in self.path.parent.iterdir():
            m = pattern.fullmatch(entry.name)
            if m is None or pid_alive(int(m.group(1))):
                continue
            keep = self.path.with_name(f"{self.path.stem}.interrupted-{m.group(1)}{self.path.suffix}")
            with contextlib.suppress(OSError):
                if recover(entry):
                    os.replace(entry, keep)
                    log.warning("kept what an interrupted run had written to %s as %s", self.path, keep)
                else:
                    entry.unlink()
                    log.info("removed %s, left unfinished by an interrupted run", entry)

    def commit(self) -> None:
        """fsync the partial file and rename it over ``path``."""
        try:
            with open(self.file, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(self.file, self.path)
        except OSError as exc:
            self.discard()
            raise EdgekitError(f"cannot write {self.path}: {exc.strerror or exc}; {_kept(self.path)}") from exc

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.file.unlink()


def _whole_lines(file: Path) -> bool:
    """Cut a torn last line off ``file``; True when whole lines are left."""
    data = file.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(file, "rb+") as f:
            f.truncate(end)
    return end > 0


class JsonSink:
    """One JSON object per line and frame (``-`` is stdout).

    A file is written as ``.NAME.PID.partial.jsonl`` beside it, one whole line per ``write``, and
    renamed over ``path`` on close: the previous file stays until a complete one replaces it. A
    symlink's target is written so (the link stays); a device or FIFO is written straight to. A
    write that fails (a full disk) leaves no torn line and stops the run with one line naming the
    file. A killed run's whole lines are kept at the next run as ``NAME.interrupted-PID.jsonl``.
    """

    def __init__(self, path: str):
        self.path = path
        self.lines = 0
        self._fd = None
        self._size = 0
        self._stdout = False
        self._failed = False
        self._clock = None

    def open(self, info) -> None:
        self._clock, self._stop = info.clock, info.stop
        if self.path == "-":
            self._stdout = True
            return
        path, atomic = output_target(self.path)
        if not atomic:
            self._fd, self._partial = open_special(path), None
            return
        _writable(path)
        self._partial = _Partial(path)
        self._partial.clean_stale(_whole_lines)
        try:
            self._fd = os.open(self._partial.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        except OSError as exc:
            raise InputError(f"cannot write {path}: {exc.strerror}") from exc

    def write(self, result) -> None:
        if self._failed:
            return
        line = json.dumps(result.to_json(self._clock), separators=(",", ":")) + "\n"
        if self._stdout:
            try:
                sys.stdout.write(line)
                sys.stdout.flush()
            except BrokenPipeError:  # `--json - | head -1`: the reader has what it wanted
                self._failed = True
                _quiet_stdout()
                self._stop("stdout closed")
            return
        data = line.encode("utf-8")
        try:
            done = 0
            while done < len(data):
                done += os.write(self._fd, data[done:])
        except BrokenPipeError:  # a FIFO's reader went away, as `--json -` under `| head`
            self._failed = True
            self._stop(f"{self.path} closed by its reader")
            return
        except OSError as exc:
            self._failed = True
            with contextlib.suppress(OSError):
                if self._partial is not None:
                    os.ftruncate(self._fd, self._size)  # no torn line
            raise _write_error(exc, Path(self.path), self.lines, self._partial is not None) from exc
        self._size += len(data)
        self.lines += 1

    def close(self) -> None:
        if self._stdout:
            if not self._failed:
                with contextlib.suppress(OSError):
                    sys.stdout.flush()
            return
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.close(fd)
        path = Path(self.path)
        if self._partial is None:  # a device or FIFO, written straight to
            return
        if self._failed:
            self._partial.discard()
        elif self.lines == 0:
            self._partial.discard()
            log.warning("no frames processed; %s not written", path)
        else:
            self._partial.commit()


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that exiting does not fail on flushing a closed pipe."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


MIN_FREE = 4 << 20  # bytes: a recording stops when its disk has less free space than this


def _playable(file: Path, frames: int | None = None) -> bool:
    """True when OpenCV reads a frame from the video ``file`` and its container counts ``frames`` (±1)."""
    import cv2

    cap = cv2.VideoCapture(str(file))
    try:
        if not (cap.isOpened() and cap.read()[0]):
            return False
        return frames is None or abs(cap.get(cv2.CAP_PROP_FRAME_COUNT) - frames) <= 1
    finally:
        cap.release()


class VideoSink:
    """The annotated frames as a video (``mp4v`` in .mp4/.mov/.m4v/.mkv, ``MJPG`` in .avi).

    Written to ``.STEM.PID.partial.EXT`` beside ``path``, checked and renamed on close, so ``path``
    is always a whole, playable video and a previous one stays until a new one is complete (pip
    OpenCV cannot write H.264/avc1). OpenCV does not report failed writes, so the sink watches the
    disk: below ``MIN_FREE`` free bytes the run stops with one line naming the file. MP4/MOV write
    their index at the end and a killed run loses them; MKV and AVI survive a kill (minus the
    last seconds), and the next run keeps such a partial file as ``STEM.interrupted-PID.EXT``.
    Frames of another size (a camera that came back at another resolution) are resized to the
    first frame's size.
    """

    def __init__(self, path: str, fps: float | None = None):
        self.path, atomic = output_target(path)  # a symlink's target is written (the link stays)
        if not atomic:
            raise UsageError(f"--record needs a regular file, and {path} is a device or FIFO")
        self.fps = fps
        codec = VIDEO_CODECS.get(self.path.suffix.lower())
        if codec is None:
            raise UsageError(f"--record needs a {', '.join(VIDEO_CODECS)} file, got {self.path.name}")
        self.codec = codec
        self._partial = _Partial(self.path)
        self.partial = self._partial.file
        self.frames = 0
        self._writer = None
        self._size = None
        self._failed = False

    def open(self, info) -> None:
        _writable(self.path)
        self._partial.clean_stale(lambda f: f.suffix.lower() in KILL_SAFE and _playable(f))
        self._check_space()
        self._info = info

    def _check_space(self) -> None:
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return
        free = st.f_bavail * st.f_frsize
        if free < MIN_FREE:
            self._failed = True
            raise EdgekitError(
                f"cannot write {self.path}: the disk is full ({free // 1024} KiB free, a recording needs "
                f"{MIN_FREE >> 20} MiB; after {self.frames} frames); {_kept(self.path)}"
            )

    def write(self, result) -> None:
        import cv2

        image = result.annotated()
        if self._writer is None:
            fps = self.fps or self._info.fps or 30.0
            self._size = (image.shape[1], image.shape[0])
            self._writer = cv2.VideoWriter(str(self.partial), cv2.VideoWriter_fourcc(*self.codec), fps, self._size)
            if not self._writer.isOpened():
                self._writer = None
                self._failed = True
                self._partial.discard()
                raise EdgekitError(f"OpenCV cannot write {self.codec} video to {self.path}")
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size)
        self._check_space()
        self._writer.write(image)
        self.frames += 1

    def close(self) -> None:
        if self._writer is None:
            if not self._failed:
                log.warning("no frames to record; %s not written", self.path)
            return
        self._writer.release()
        self._writer = None
        if self._failed:
            self._partial.discard()
            return
        if not _playable(self.partial, self.frames):
            self._partial.discard()
            raise EdgekitError(f"cannot write {self.path}: the video is unreadable or incomplete after {self.frames} "
                               f"frames (disk full or failing?); {_kept(self.path)}")
        self._partial.commit()
        log.info("recorded %d frames to %s", self.frames, self.path)


def gui_available() -> str | None:
    """None when OpenCV can open a window here, else why not."""
    from edgekit.opencv_build import opencv_build

    if opencv_build()["GUI"] == "NONE":
        return "this OpenCV has no GUI support (opencv-python-headless?)"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no screen (DISPLAY and WAYLAND_DISPLAY are unset)"
    return None


class DisplaySink:
    """A window showing the annotated frames (with several sources, one window each); closing one or
    pressing q/Esc stops the loop."""

    def __init__(self, title: str = "edgekit"):
        self.title = title
        self._windows: set[str] = set()
        self._named = False

    def open(self, info) -> None:
        why = gui_available()
        if why:
            raise DeviceError(f"--display needs a GUI: {why}; use --serve to watch over HTTP")
        self._stop = info.stop
        self._named = len(getattr(info, "sources", ())) > 1

    def write(self, result) -> None:
        import cv2

        title = f"{self.title}: {result.source}" if self._named else self.title
        cv2.imshow(title, result.annotated())
        self._windows.add(title)
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27) or cv2.getWindowProperty(title, cv2.WND_PROP_VISIBLE) < 1:
            self._stop("window closed")

    def close(self) -> None:
        if self._windows:
            import cv2

            for title in self._windows:
                cv2.destroyWindow(title)
            cv2.waitKey(1)
            self._windows = set()

"""Third-party noise held back: shown with ``-v`` or when the step fails, never on success.

:func:`captured` wraps a step that calls chatty libraries (tf2onnx tracebacks it recovers from,
onnxruntime/onnxconverter UserWarnings, TensorFlow's C++ logs). Inside it, Python warnings are
recorded, log records of every logger but ``edgekit`` are collected, and file descriptor 2 (where
C++ libraries write) goes to a temporary file. edgekit's own log lines and progress stay live. When
the step raises, everything captured is written to stderr before the error; with ``-v``
(:func:`set_verbose`) nothing is captured.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings

_state = {"verbose": False, "live": None}


def set_verbose(verbose: bool) -> None:
    """Show third-party output as it comes (``-v``) instead of capturing it."""
    _state["verbose"] = bool(verbose)


def live_stderr():
    """The stream that reaches the user's stderr, also inside :func:`captured`."""
    return _state["live"] or sys.stderr


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []
        self.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))

    def emit(self, record):
        if not record.name.startswith("edgekit"):
            self.lines.append(self.format(record))


@contextlib.contextmanager
def captured():
    """Capture third-party warnings, logs and C++ stderr for the block; replay them if it raises."""
    if _state["verbose"] or _state["live"] is not None:
        yield
        return
    old_stderr = sys.stderr
    buffer = io.StringIO()
    collect = _Collect()
    root = logging.getLogger()
    with contextlib.ExitStack() as stack:
        fd_file = stack.enter_context(tempfile.TemporaryFile(mode="w+b"))
        saved = _redirect_fd2(fd_file)
        live = os.fdopen(os.dup(saved), "w", buffering=1) if saved is not None and _is_fd2(old_stderr) else old_stderr
        ours = [h for h in logging.getLogger("edgekit").handlers
                if isinstance(h, logging.StreamHandler) and h.stream is old_stderr]
        for h in ours:
            h.setStream(live)
        root.addHandler(collect)
        caught = stack.enter_context(warnings.catch_warnings(record=True))
        sys.stderr, _state["live"] = buffer, live
        try:
            yield
        except BaseException:
            failed = True
            raise
        else:
            failed = False
        finally:
            sys.stderr, _state["live"] = old_stderr, None
            root.removeHandler(collect)
            for h in ours:
                h.setStream(old_stderr)
            if saved is not None:
                _restore_fd2(saved)
            if live is not old_stderr:
                live.close()
            if failed:
                fd_file.seek(0)
                text = fd_file.read().decode("utf-8", "replace") + buffer.getvalue()
                text += "".join(f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}\n" for w in caught)
                text += "".join(line + "\n" for line in collect.lines)
                if text.strip():
                    old_stderr.write(text)
                    old_stderr.flush()


def _is_fd2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


def _redirect_fd2(target) -> int | None:
    """Point fd 2 at ``target``; return a duplicate of the old fd 2 (None if there is no fd 2)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        return None
    os.dup2(target.fileno(), 2)
    return saved


def _restore_fd2(saved: int) -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)

"""Results on the console: what ``edgekit run`` prints when no other output is given.

One line per result, like ``detectnet`` or ``yolo predict``, at a bounded rate: a burst of
``burst`` lines, then at most ``rate`` per second; a line says how many results were not shown
before it, and the last result is always shown.
"""

from __future__ import annotations

import sys
import time

PER_LINE = 5  # results shown per line (a detector's 100 boxes would not fit)


def format_result(result: dict) -> str:
    """One result (any task) as text: ``label score`` and, when there is one, the box."""
    text = str(result.get("label", result.get("class", "?")))
    if "score" in result:
        text += f" {float(result['score']):.2f}"
    if result.get("box") is not None:
        text += " [" + ",".join(f"{float(v):.3g}" for v in result["box"]) + "]"
    return text


def where(frame_result, named: bool = False) -> str:
    """Where a frame came from: ``file`` (an image), ``file#N`` (frame N of a video) or ``frame N``;
    ``named``: after its source's name (``door: frame 12``)."""
    f = frame_result.frame
    if f.file is None:
        text = f"frame {f.number}"
    else:
        text = f"{f.file}#{f.file_frame}" if _video(f.file) else f.file
    return f"{f.source}: {text}" if named else text


def _video(path: str) -> bool:
    from edgekit.images import IMAGE_EXTENSIONS

    return not path.lower().endswith(tuple(IMAGE_EXTENSIONS))


class ConsoleSink:
    """One line per frame's results on ``stream`` (stdout), rate-bounded (see the module)."""

    def __init__(self, stream=None, rate: float = 2.0, burst: int = 10, clock=time.monotonic):
        self.stream, self.rate, self.burst, self.clock = stream, rate, burst, clock
        self.hidden = 0
        self._tokens = float(burst)
        self._last = None
        self._pending = None
        self._stop = None
        self._closed = False
        self.named = False

    def open(self, info) -> None:
        self.named = len(getattr(info, "sources", ())) > 1  # several sources: each line names its own
        self.stream = self.stream or sys.stdout
        self._last = self.clock()
        self._stop = getattr(info, "stop", None)

    def write(self, result) -> None:
        now = self.clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self._print(result)
        else:
            self.hidden += 1
            self._pending = result

    def _print(self, result) -> None:
        results = result.results
        shown = "; ".join(format_result(r) for r in results[:PER_LINE]) or "nothing"
        if len(results) > PER_LINE:
            shown += f"; ... {len(results) - PER_LINE} more"
        skipped = f"  (+{self.hidden} not shown)" if self.hidden else ""
        self.hidden, self._pending = 0, None
        if self._closed:
            return
        try:
            self.stream.write(f"{where(result, self.named)}: {shown}{skipped}\n")
            self.stream.flush()
        except BrokenPipeError:  # `edgekit run B video.mp4 | head -1`: the reader has what it wanted
            from edgekit.stream.sinks import _quiet_stdout

            _quiet_stdout()
            self._closed = True
            if self._stop is not None:
                self._stop("stdout closed")

    def close(self) -> None:
        if self._pending is not None:
            self.hidden -= 1
            self._print(self._pending)

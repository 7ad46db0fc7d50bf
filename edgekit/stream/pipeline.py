"""The loop: capture -> preprocess -> infer -> postprocess -> sinks, overlapped on threads.

* a *prepare* thread takes frames from the :class:`~edgekit.stream.sources.Capture` and runs the
  bundle's :class:`~edgekit.preprocess.Preprocess` (the one preprocessing);
* an *infer* thread activates the runner and is the only thread that touches it;
* the calling thread postprocesses, writes the sinks, logs, and talks to systemd.

Small bounded queues join them, so the model never waits on capture or output when the source is
faster. For a live source the next frame is prepared *just in time* (when the running inference
is about to finish), from the newest frame, so a frame waits for at most a fraction of one
inference: end-to-end latency stays near preprocess + infer. Files are processed in order.

:meth:`Pipeline.stop` (signal-safe) finishes the frame being inferred, writes what was inferred,
closes every sink and releases the source.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from edgekit.stream.metrics import Metrics
from edgekit.stream.sources import Capture, Frame

log = logging.getLogger(__name__)

_END = object()
STOP_GRACE = 1.5  # seconds the output side waits for in-flight frames after a stop


@dataclass
class FrameResult:
    """One processed frame with its results, monotonic stage stamps and per-stage latency (ms)."""

    index: int
    frame: Frame
    results: list = field(default_factory=list)
    stamps: dict = field(default_factory=dict)
    latency_ms: dict = field(default_factory=dict)
    draw: object = None  # callable(image, results) -> image
    overlay: list = field(default_factory=list)
    events: list | None = None  # with analytics: the frame's events (edgekit.analytics.events)
    _annotated: np.ndarray | None = None

    @property
    def image(self) -> np.ndarray:
        return self.frame.image

    def annotated(self) -> np.ndarray:
        """The frame with its results drawn on it (computed once)."""
        if self._annotated is None:
            image = self.frame.image.copy()
            if self.draw is not None:
                image = self.draw(image, self.results)
            if self.overlay:
                from edgekit.stream.postprocess import draw_text

                draw_text(image, self.overlay, (0, image.shape[0] - 3 * max(12, image.shape[0] // 20)))
            self._annotated = image
        return self._annotated

    def to_json(self, clock) -> dict:
        """The JSON line: indices, the file and its frame number (files and image folders), wall-clock
        timestamps (epoch s), results, latency (ms)."""
        line = {"index": self.index, "source_frame": self.frame.number}
        if self.frame.file is not None:
            line.update(file=self.frame.file, frame=self.frame.file_frame)
        return {
            **line,
            "timestamps": {k: round(clock(v), 6) for k, v in self.stamps.items()},
            "results": self.results,
            **({"events": self.events} if self.events is not None else {}),
            "latency_ms": {k: round(v, 3) for k, v in self.latency_ms.items()},
        }


@dataclass
class _Work:
    frame: Frame
    tensor: np.ndarray
    prepared: float
    preprocess_ms: float
    index: int = -1
    outputs: dict | None = None
    inferred: float = 0.0
    infer_ms: float = 0.0


@dataclass
class StreamInfo:
    """What sinks learn when they open: frame rate, labels, metrics, a way to stop the loop."""

    fps: float | None
    labels: list
    metrics: Metrics
    stop: object
    clock: object


class Pipeline:
    """The camera loop over an opened-on-run :class:`Capture`, a not-yet-active runner and sinks."""

    def __init__(self, bundle, capture: Capture, runner, postprocess, sinks=(), max_frames: int | None = None,
                 duration: float | None = None, notifier=None, log_every: float = 10.0, queue_size: int = 2,
                 stall_s: float = 10.0, analytics=None, source_name: str = "main"):
        self.bundle = bundle
        self.capture = capture
        self.runner = runner
        self.postprocess = postprocess
        self.sinks = list(sinks)
        self.max_frames = max_frames
        self.duration = duration
        self.notifier = notifier
        self.log_every = log_every
        self.queue_size = queue_size
        self.stall_s = stall_s
        self.metrics = Metrics()
        self.analytics, self.source_name = analytics, source_name  # edgekit.analytics.stage.Analytics
        if analytics is not None:
            self.metrics.exporters.append(analytics)
        self.stop_reason = None
        self.prep = bundle.preprocess
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._demand = threading.Event()
        self._taken = time.monotonic()
        self._ema = {"prepare": 0.0, "infer": 0.0}
        self._beats: dict[str, float] = {}
        self._t0 = (time.monotonic(), time.time())

    # ---- control --------------------------------------------------------------------------
    def stop(self, reason: str = "stopped") -> None:
        """Ask the loop to finish the current frame and end (safe from a signal handler)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()

    def wall(self, mono: float) -> float:
        """A monotonic stamp as wall-clock epoch seconds."""
        return self._t0[1] + (mono - self._t0[0])

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self.stop("error")

    def _beat(self, name: str) -> None:
        self._beats[name] = time.monotonic()

    def alive(self) -> bool:
        """True while every stage (and the capture reader) made progress within ``stall_s``."""
        now = time.monotonic()
        beats = [*self._beats.values(), self.capture.heartbeat]
        return all(now - t < self.stall_s for t in beats)

    # ---- stages ---------------------------------------------------------------------------
    def _prepare(self, q: queue.Queue) -> None:
        live = self.capture.live
        try:
            while not self._stop.is_set():
                self._beat("prepare")
                if live:  # just in time: start when the running inference is about to end
                    if not self._demand.wait(0.1):
                        continue
                    self._demand.clear()
                    infer, prep = self._ema["infer"], self._ema["prepare"]
                    start = self._taken + infer - prep - (0.15 * infer + 0.001)
                    if self._stop.wait(max(0.0, start - time.monotonic())):
                        break
                frame = None
                while frame is None and not self._stop.is_set():
                    self._beat("prepare")
                    frame = self.capture.get(0.1)
                    if frame is None and self.capture.ended:
                        q.put(_END)
                        return
                if frame is None:
                    break
                t0 = time.monotonic()
                tensor = self.prep(frame.image)[None]
                t1 = time.monotonic()
                self._ema["prepare"] = _ema(self._ema["prepare"], t1 - t0)
                work = _Work(frame, tensor, t1, (t1 - t0) * 1000)
                while not self._stop.is_set():
                    try:
                        q.put(work, timeout=0.1)
                        break
                    except queue.Full:
                        self._beat("prepare")
        except BaseException as exc:
            self._fail(exc)

    def _infer(self, inq: queue.Queue, outq: queue.Queue) -> None:
        index = 0
        try:
            self.runner.activate()
        except BaseException as exc:
            self._fail(exc)
            self._ready.set()
            outq.put(_END)
            return
        self._ready.set()
        self._demand.set()
        try:
            while not self._stop.is_set():
                self._beat("infer")
                try:
                    work = inq.get(timeout=0.1)
                except queue.Empty:
                    continue
                if work is _END:
                    self.stop("end of stream")
                    break
                self._taken = time.monotonic()
                self._demand.set()
                outputs = self.runner.infer(work.tensor)
                work.inferred = time.monotonic()
                work.infer_ms = (work.inferred - self._taken) * 1000
                self._ema["infer"] = _ema(self._ema["infer"], work.inferred - self._taken)
                work.outputs, work.index = outputs, index
                outq.put(work)
                index += 1
                if self.max_frames is not None and index >= self.max_frames:
                    self.stop("max frames")
        except BaseException as exc:
            self._fail(exc)
        finally:
            try:  # the output side stops reading STOP_GRACE after a stop: never block the deactivation
                outq.put(_END, timeout=STOP_GRACE)
            except queue.Full:
                pass
            self.runner.deactivate()

    def _finish(self, work: _Work) -> FrameResult:
        f = work.frame
        results = self.postprocess(work.outputs, f.image.shape[:2])
        done = time.monotonic()
        return FrameResult(
            index=work.index,
            frame=f,
            results=results,
            stamps={"captured": f.captured, "preprocessed": work.prepared, "inferred": work.inferred, "postprocessed": done},
            latency_ms={
                "capture": f.read_ms,
                "preprocess": work.preprocess_ms,
                "infer": work.infer_ms,
                "postprocess": (done - work.inferred) * 1000,
                "end_to_end": (done - f.captured) * 1000,
            },
            draw=getattr(self.postprocess, "draw", None),
        )

    # ---- the loop -------------------------------------------------------------------------
    def run(self) -> dict:
        """Open sinks and source, run until the end, a limit or :meth:`stop`; return the summary."""
        opened = []
        threads = []
        try:
            info = StreamInfo(None, self.bundle.labels, self.metrics, self.stop, self.wall)
            for sink in self.sinks:  # sinks first: a bad path fails before the camera opens
                sink.open(info)
                opened.append(sink)
            self.capture.start()
            info.fps = self.capture.fps
            prepq = queue.Queue(1 if self.capture.live else self.queue_size)
            outq = queue.Queue(max(2, self.queue_size * 2))
            threads = [
                threading.Thread(target=self._infer, args=(prepq, outq), name="edgekit-infer", daemon=True),
                threading.Thread(target=self._prepare, args=(prepq,), name="edgekit-prepare", daemon=True),
            ]
            threads[0].start()
            while not self._ready.wait(0.1) and not self._stop.is_set():
                pass  # activation may build an engine: stay stoppable
            if self._error is None and not self._stop.is_set():
                threads[1].start()
                self.metrics.started = time.monotonic()
                self._output(outq, opened)
        finally:
            self.stop("stopped")
            for t in threads:
                if t.ident is not None:
                    t.join(STOP_GRACE / 2)
            self.capture.close()
            errors = []
            for sink in opened:
                try:
                    sink.close()
                except Exception as exc:
                    errors.append(exc)
            if self.notifier is not None:
                self.notifier.stopping()
        if self._error is not None:
            raise self._error
        if errors:
            raise errors[0]
        return self.summary()

    def _output(self, outq: queue.Queue, sinks) -> None:
        last_log = time.monotonic()
        deadline = None
        while True:
            now = time.monotonic()
            if self._stop.is_set() and deadline is None:
                deadline = now + STOP_GRACE
            if deadline is not None and now > deadline:
                log.warning("the inference stage did not finish in time; leaving it")
                return
            if self.duration is not None and now - self.metrics.started >= self.duration:
                self.stop("duration")
            try:
                work = outq.get(timeout=0.1)
            except queue.Empty:
                if self.notifier is not None and self.alive():
                    self.notifier.watchdog()
                continue
            if work is _END:
                return
            result = self._finish(work)
            if self.analytics is not None:
                result.results, result.events = self.analytics.process(
                    self.source_name, result.results, result.frame.number, self.wall(result.frame.captured))
                result.draw = self.analytics.drawer(self.source_name, result.draw)
            if result.index == 0:
                self._note_size(result.image)
            self.metrics.drops = self.capture.drops
            self.metrics.reconnects = self.capture.reconnects
            self.metrics.add(result.latency_ms)
            self.metrics.count(result.results)
            result.overlay = [f"{self.metrics.fps():.1f} fps  infer {result.latency_ms['infer']:.1f} ms"]
            for sink in sinks:
                sink.write(result)
            if self.notifier is not None:
                if self.metrics.frames == 1:
                    model = self.metrics.model
                    chosen = f"; model {model['key']} ({model['precision']}) on {model['backend']}" if model else ""
                    self.notifier.ready(f"running: first frame from {self.capture.source.name}{chosen}")
                if self.alive():
                    self.notifier.watchdog()
            if now - last_log >= self.log_every:
                last_log = now
                line = self.metrics.line()
                log.info("%s", line)
                if self.notifier is not None:
                    self.notifier.status(line)

    def _note_size(self, image: np.ndarray) -> None:
        if tuple(image.shape[:2]) != self.prep.size:
            h, w = self.prep.size
            log.info("%s gives %dx%d frames; the model takes %dx%d: resized (%s) as the bundle says",
                     self.capture.source.name, image.shape[1], image.shape[0], w, h, self.prep.resize)

    def summary(self) -> dict:
        snap = self.metrics.snapshot()
        snap["stopped_by"] = self.stop_reason
        return snap


def _ema(old: float, new: float, k: float = 0.2) -> float:
    return new if old == 0.0 else old + k * (new - old)


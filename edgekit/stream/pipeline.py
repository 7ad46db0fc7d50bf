"""The loop: a chain of single-purpose stages, overlapped on threads.

=============  ===============================================================================
sources        one :class:`~edgekit.stream.capture.Capture` per source (latest frame, or in order)
mux            :class:`~edgekit.stream.mux.Muxer`: the newest frame of each source that has one,
               within the batch timeout
preprocess     the bundle's one :class:`~edgekit.preprocess.Preprocess`, per frame -> batch tensor
infer          one runner call per batch (:mod:`~edgekit.stream.infer`)
demux          the outputs split back per frame
postprocess    per task (:mod:`~edgekit.stream.postprocess`) -> :class:`FrameResult`
per source     stages keyed by source name (:mod:`~edgekit.stream.per_source`)
consumers      sinks: JSON lines, recordings, the HTTP server, console, window
=============  ===============================================================================

Threads: a *prepare* thread runs mux and preprocess (with several sources, files are read and
frames preprocessed on a pool of at most one worker per source and CPU); an *infer* thread
activates the runner and is the only thread that touches it; the calling thread runs demux, postprocess, the per-source stages
and the consumers, logs, and talks to systemd. Small bounded queues join them, so the model never
waits on capture or output when the sources are faster. With a live source the next batch is formed
*just in time* (when the running inference is about to finish), from the newest frames, so a frame
waits for at most a fraction of one inference. Files are processed in order. One source is the
same chain with N = 1.

:meth:`Pipeline.stop` (signal-safe) finishes the batch being inferred, writes what was inferred,
closes every sink and releases the sources. The run ends when every source has ended (a live
source never ends: it reconnects), at a limit, or on a stop.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from edgekit.errors import DeviceError
from edgekit.stream.capture import Capture
from edgekit.stream.infer import batch_limit, demux, infer_batch
from edgekit.stream.metrics import Metrics
from edgekit.stream.mux import Muxer
from edgekit.stream.results import FrameResult, StreamInfo
from edgekit.stream.source_base import Frame

log = logging.getLogger(__name__)

_END = object()
STOP_GRACE = 1.5  # seconds the output side waits for in-flight frames after a stop


@dataclass
class _Work:
    frames: list[Frame]
    tensor: np.ndarray
    prepared: float
    preprocess_ms: float
    index: int = -1  # the run index of the batch's first frame
    outputs: dict | None = None
    inferred: float = 0.0
    infer_ms: float = 0.0


class Pipeline:
    """The camera loop over not-yet-started captures (one, or a list), a not-yet-active runner and sinks.

    ``batch_timeout`` (seconds; None: :func:`~edgekit.stream.mux.default_timeout`) bounds how long a
    batch waits for live sources; ``missing_ok`` lets a source that does not open at the start be
    logged and left out (a live one keeps trying) instead of failing the run.
    """

    def __init__(self, bundle, capture, runner, postprocess, sinks=(), max_frames: int | None = None,
                 duration: float | None = None, notifier=None, log_every: float = 10.0, queue_size: int = 2,
                 stall_s: float = 10.0, batch_timeout: float | None = None, missing_ok: bool = False):
        self.bundle = bundle
        self.captures: list[Capture] = list(capture) if isinstance(capture, (list, tuple)) else [capture]
        self.runner = runner
        self.postprocess = postprocess
        self.sinks = list(sinks)
        self.max_frames = max_frames
        self.duration = duration
        self.notifier = notifier
        self.log_every = log_every
        self.queue_size = queue_size
        self.stall_s = stall_s
        self.batch_timeout = batch_timeout
        self.missing_ok = missing_ok
        self.metrics = Metrics([c.name for c in self.captures])
        self.mux: Muxer | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.stop_reason = None
        self.prep = bundle.preprocess
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._demand = threading.Event()
        self._taken = time.monotonic()
        self._ema = {"prepare": 0.0, "infer": 0.0}
        self._beats: dict[str, float] = {}
        self._sized: set[str] = set()
        self._t0 = (time.monotonic(), time.time())

    @property
    def capture(self) -> Capture:
        """The first (with one source, the only) capture."""
        return self.captures[0]

    # ---- control --------------------------------------------------------------------------
    def stop(self, reason: str = "stopped") -> None:
        """Ask the loop to finish the current batch and end (safe from a signal handler)."""
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
        """True while every stage (and every capture not ended) made progress within ``stall_s``."""
        now = time.monotonic()
        beats = [*self._beats.values(), *(c.heartbeat for c in self.captures if not c.ended)]
        return all(now - t < self.stall_s for t in beats)

    # ---- stages ---------------------------------------------------------------------------
    def _prepare(self, q: queue.Queue) -> None:
        live = any(c.live for c in self.captures)
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
                frames = self.mux.next(self._stop, beat=lambda: self._beat("prepare"))
                if frames is None:
                    if not self._stop.is_set():
                        q.put(_END)
                    return
                t0 = time.monotonic()
                images = [f.image for f in frames]
                tensor = np.stack(list(self._pool.map(self.prep, images)) if self._pool and len(images) > 1
                                  else [self.prep(image) for image in images])
                t1 = time.monotonic()
                self._ema["prepare"] = _ema(self._ema["prepare"], t1 - t0)
                work = _Work(frames, tensor, t1, (t1 - t0) * 1000)
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
            limit = batch_limit(self.runner)
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
                outputs = infer_batch(self.runner, work.tensor, limit)
                work.inferred = time.monotonic()
                work.infer_ms = (work.inferred - self._taken) * 1000
                self._ema["infer"] = _ema(self._ema["infer"], work.inferred - self._taken)
                work.outputs, work.index = outputs, index
                outq.put(work)
                index += len(work.frames)
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

    def _finish(self, work: _Work) -> list[FrameResult]:
        """Demux and postprocess: one result per frame of the batch (none past ``max_frames``)."""
        out = []
        n = len(work.frames)
        for i, (f, outputs) in enumerate(zip(work.frames, demux(work.outputs, n))):
            if self.max_frames is not None and work.index + i >= self.max_frames:
                break
            t0 = time.monotonic()
            results = self.postprocess(outputs, f.image.shape[:2])
            done = time.monotonic()
            out.append(FrameResult(
                index=work.index + i,
                frame=f,
                results=results,
                stamps={"captured": f.captured, "preprocessed": work.prepared, "inferred": work.inferred,
                        "postprocessed": done},
                latency_ms={
                    "capture": f.read_ms,
                    "preprocess": work.preprocess_ms,
                    "infer": work.infer_ms,
                    "postprocess": (done - t0) * 1000,
                    "end_to_end": (done - f.captured) * 1000,
                },
                draw=getattr(self.postprocess, "draw", None),
                batch_size=n,
            ))
        return out

    # ---- the loop -------------------------------------------------------------------------
    def run(self) -> dict:
        """Open sinks and sources, run until the end, a limit or :meth:`stop`; return the summary."""
        opened = []
        threads = []
        try:
            info = StreamInfo(None, self.bundle.labels, self.metrics, self.stop, self.wall,
                              sources=[c.name for c in self.captures])
            for sink in self.sinks:  # sinks first: a bad path fails before the cameras open
                sink.open(info)
                opened.append(sink)
            self._start_captures(info)
            workers = min(len(self.captures), os.cpu_count() or 1)
            if workers > 1:  # several files decode, and frames preprocess, at once where cores are spare
                self._pool = ThreadPoolExecutor(workers, thread_name_prefix="edgekit-read")
            self.mux = Muxer(self.captures, self.batch_timeout, self._pool)
            log.debug("batch timeout %.1f ms", self.mux.timeout * 1000)
            prepq = queue.Queue(1 if any(c.live for c in self.captures) else self.queue_size)
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
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            for capture in self.captures:
                capture.close()
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

    def _start_captures(self, info: StreamInfo) -> None:
        """Open every source (each raises its own clear error, unless ``missing_ok``)."""
        for capture in self.captures:
            capture.start(missing_ok=self.missing_ok)
            info.rates[capture.name] = capture.fps
        info.fps = self.capture.fps
        if all(c.state == "failed" for c in self.captures):
            raise DeviceError("no source opened")

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
                self.metrics.note_sources(self.captures)
                if self.notifier is not None and self.alive():
                    self.notifier.watchdog()
                continue
            if work is _END:
                return
            self.metrics.note_sources(self.captures)
            for result in self._finish(work):
                self._write(result, sinks)
            if now - last_log >= self.log_every:
                last_log = now
                line = self.metrics.line()
                log.info("%s", line)
                if self.notifier is not None:
                    self.notifier.status(line)

    def _write(self, result: FrameResult, sinks) -> None:
        if result.source not in self._sized:
            self._sized.add(result.source)
            self._note_size(result)
        self.metrics.add(result.latency_ms, source=result.source)
        self.metrics.count(result.results)
        fps = self.metrics.fps()  # 0 until two frames are done: not shown then
        result.overlay = [(f"{fps:.1f} fps  " if fps else "") + f"infer {result.latency_ms['infer']:.1f} ms"]
        for sink in sinks:
            sink.write(result)
        if self.notifier is not None:
            if self.metrics.frames == 1:
                model = self.metrics.model
                chosen = f"; model {model['key']} ({model['precision']}) on {model['backend']}" if model else ""
                self.notifier.ready(f"running: first frame from {self._describe(result.source)}{chosen}")
            if self.alive():
                self.notifier.watchdog()

    def _describe(self, name: str) -> str:
        capture = next(c for c in self.captures if c.name == name)
        return capture.source.name if len(self.captures) == 1 else f"source {name} ({capture.source.name})"

    def _note_size(self, result: FrameResult) -> None:
        image = result.image
        if tuple(image.shape[:2]) != self.prep.size:
            h, w = self.prep.size
            log.info("%s gives %dx%d frames; the model takes %dx%d: resized (%s) as the bundle says",
                     self._describe(result.source), image.shape[1], image.shape[0], w, h, self.prep.resize)

    def summary(self) -> dict:
        self.metrics.note_sources(self.captures)
        snap = self.metrics.snapshot()
        snap["stopped_by"] = self.stop_reason
        return snap


def _ema(old: float, new: float, k: float = 0.2) -> float:
    return new if old == 0.0 else old + k * (new - old)

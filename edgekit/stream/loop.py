"""``run_loop``: the camera loop assembled from ``edgekit run``'s options (scriptable as is).

Light to import (numpy, OpenCV and the runners come inside ``run_loop``), so that its SIGINT/SIGTERM
handlers are in place early in ``edgekit run``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import threading


log = logging.getLogger(__name__)


class _Signals:
    """SIGINT/SIGTERM handlers of one run; a signal before the pipeline exists is kept for it."""

    def __init__(self):
        self.pipeline = None
        self.early = None

    def handler(self, signum, frame):
        if self.pipeline is None:
            if self.early is not None:
                raise KeyboardInterrupt
            self.early = signum
            return
        if self.pipeline.stop_reason is not None and self.pipeline.stop_reason.startswith("signal"):
            raise KeyboardInterrupt
        self.pipeline.stop(f"signal {signal.Signals(signum).name}")

    def attach(self, pipeline) -> None:
        self.pipeline = pipeline
        if self.early is not None:
            pipeline.stop(f"signal {signal.Signals(self.early).name}")


_installed: list = []  # the _Signals of the run in progress on the main thread


@contextlib.contextmanager
def _handling(signals=(signal.SIGINT, signal.SIGTERM)):
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    state = _Signals()
    old = {s: signal.signal(s, state.handler) for s in signals}
    _installed.append(state)
    try:
        yield state
    finally:
        _installed.remove(state)
        for s, h in old.items():
            signal.signal(s, h)


def signals_from_start(fn):
    """Decorator: SIGINT/SIGTERM handled from the call's first line (imports and engine builds take a while)."""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with _handling():
            return fn(*args, **kwargs)

    return call


@contextlib.contextmanager
def stop_on_signals(pipeline, signals=(signal.SIGINT, signal.SIGTERM)):
    """SIGINT/SIGTERM stop the loop gracefully; a second one interrupts at once (main thread only)."""
    if _installed:
        _installed[-1].attach(pipeline)
        yield
        return
    with _handling(signals) as state:
        if state is not None:
            state.attach(pipeline)
        yield


def source_name(source) -> str:
    """A one-source run's source name in events, topics and metrics: ``video0``, ``csi0``, the file's
    stem or the stream's host (letters, digits, '-', '_', '.')."""
    import os
    from urllib.parse import urlsplit

    from edgekit.events.delivery import safe_name

    text = str(source)
    if text.isdigit():
        return f"video{text}"
    if text.startswith("csi://"):
        return "csi" + safe_name(text[6:])
    if "://" in text:
        return safe_name(urlsplit(text).hostname or text) or "main"
    if text.startswith("gst:"):
        return "gst"
    return safe_name(os.path.splitext(os.path.basename(text.rstrip("/")))[0]) or "main"


def summary_text(summary: dict) -> str:
    lat = summary["latency_ms"]
    from edgekit.stream.metrics import STAGES

    parts = [f"{s.replace('_', '-')} {lat[s]['p50']:.1f}/{lat[s]['p99']:.1f}" for s in STAGES if lat.get(s)]
    text = (
        f"edgekit: stopped ({summary['stopped_by']}): {summary['frames']} frames in {summary['elapsed_s']:.1f} s "
        f"({summary['average_fps']:.1f} fps), {summary['drops']} dropped"
    )
    if summary["reconnects"]:
        text += f", {summary['reconnects']} reconnects"
    return text + ("; latency ms p50/p99: " + ", ".join(parts) if parts else "")


@signals_from_start
def run_loop(bundle, source, *, width=None, height=None, fps=None, backend="auto", precision="auto", json_path=None,
             record=None, display=False, serve=None, console=False, max_frames=None, duration=None, realtime=False, loop=False,
             top_k=1, log_every=10.0, timeout=10.0, notifier=None, analytics=None, events=None, **runner_options) -> dict:
    """Run ``bundle`` on ``source`` (see :func:`~edgekit.stream.sources.open_source`) until it ends,
    a limit is reached or a signal arrives; return the summary (with its one-line ``text``).

    ``precision`` ``auto`` runs the fastest model that passed its accuracy gate; ``runner_options`` go to
    :func:`~edgekit.backends.select.open_runner` (``allow_failed_gate`` included). The chosen model and
    why are logged and shown in ``/metrics`` and ``/status.json``. ``console`` prints the results on stdout
    (:class:`~edgekit.stream.console.ConsoleSink`). ``analytics`` (an
    :class:`~edgekit.analytics.config.AnalyticsConfig`) tracks detections and counts lines and zones;
    ``events`` (an :class:`~edgekit.events.delivery.EventSink`) sends the events out."""
    from edgekit.backends.select import open_runner
    from edgekit.bundle import Bundle
    from edgekit.service.notify import Notifier
    from edgekit.stream import postprocess
    from edgekit.stream.pipeline import Pipeline
    from edgekit.stream.server import StreamServer
    from edgekit.stream.sinks import DisplaySink, JsonSink, VideoSink
    from edgekit.stream.sources import Capture, open_source

    bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    post = postprocess.for_bundle(bundle, top_k=top_k)
    runner = open_runner(bundle, backend, precision, **runner_options)  # refuses a failed gate before opening anything
    stage = None
    if analytics is not None:
        from edgekit.analytics.stage import Analytics
        from edgekit.errors import UsageError

        if bundle.task != "detection":
            raise UsageError(f"--track, --line and --zone need a detection bundle; {bundle.path} is {bundle.task}")
        stage = Analytics(analytics)
    name = source_name(source)
    if analytics is not None:
        analytics.check_sources([name])
    src = open_source(source, width, height, fps, timeout)
    pace = fps if realtime and not src.live else None
    sinks = []
    if json_path:
        sinks.append(JsonSink(json_path))
    if record:
        sinks.append(VideoSink(record))
    if serve:
        sinks.append(StreamServer(serve))
    if display:
        sinks.append(DisplaySink())
    if console:
        from edgekit.stream.console import ConsoleSink

        sinks.append(ConsoleSink())
    if events is not None:
        for sender in events.senders:
            sender.source = name
        sinks.insert(0, events)
    pipeline = Pipeline(
        bundle, Capture(src, realtime=realtime, pace_fps=pace, loop=loop), runner, post, sinks,
        max_frames=max_frames, duration=duration, notifier=notifier or Notifier(), log_every=log_every,
        analytics=stage, source_name=name,
    )
    if runner.choice is not None:
        pipeline.metrics.model = runner.choice.to_dict()
    with stop_on_signals(pipeline):
        summary = pipeline.run()
    summary["text"] = summary_text(summary)
    return summary

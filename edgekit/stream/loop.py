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
    text += "; latency ms p50/p99: " + ", ".join(parts) if parts else ""
    sources = summary.get("sources", {})
    if len(sources) > 1:
        text += "; per source: " + ", ".join(f"{name} {v['frames']} frames ({v['state']})" for name, v in sources.items())
    return text


def _per_source_record(record: str):
    """``--record``'s path for a source name when it is a ``{source}`` template or a folder (a path ending
    in ``/``, or a folder without a video suffix); None for one file."""
    from pathlib import Path

    from edgekit.stream.sinks import VIDEO_CODECS

    if "{source}" in record:
        return lambda name: record.replace("{source}", name)
    if record.endswith(("/", "\\")) or (Path(record).is_dir() and Path(record).suffix.lower() not in VIDEO_CODECS):
        return lambda name: str(Path(record) / f"{name}.mkv")
    return None


def record_paths(record: str | None, names: list[str]) -> dict:
    """The file ``--record`` writes for each source name (one file: under the first name)."""
    if not record:
        return {}
    path = _per_source_record(record)
    return {name: path(name) for name in names} if path else {names[0] if names else "": record}


def recording(record: str, names: list[str]):
    """``--record``: one VideoSink, or with a ``{source}`` template or a folder a per-source factory
    (name -> [VideoSink]); UsageError for one file and several sources."""
    from edgekit.errors import UsageError
    from edgekit.stream.sinks import VideoSink

    path = _per_source_record(record)
    if path:
        return lambda name: [VideoSink(path(name))]
    if len(names) > 1:
        raise UsageError(f"--record {record}: with {len(names)} sources give a template (out/{{source}}.mkv) or a folder")
    return VideoSink(record)


def open_captures(specs, timeout: float, missing_ok: bool):
    """A not-yet-started Capture per :class:`~edgekit.stream.source_specs.SourceSpec`."""
    from edgekit.errors import EdgekitError
    from edgekit.stream.capture import Capture
    from edgekit.stream.source_base import Unopenable
    from edgekit.stream.sources import open_source

    captures = []
    for spec in specs:
        try:
            src = open_source(spec.uri, spec.width, spec.height, spec.fps, timeout)
        except EdgekitError as exc:
            if not missing_ok:
                raise
            src = Unopenable(spec.uri, exc)
        pace = spec.fps if spec.realtime and not src.live else None
        captures.append(Capture(src, realtime=spec.realtime, pace_fps=pace, loop=spec.loop, name=spec.name))
    return captures


@signals_from_start
def run_loop(bundle, source, *, width=None, height=None, fps=None, backend="auto", precision="auto", json_path=None,
             record=None, display=False, serve=None, console=False, max_frames=None, duration=None, realtime=False, loop=False,
             top_k=1, log_every=10.0, timeout=10.0, notifier=None, sources_file=None, batch_timeout=None,
             allow_missing=False, per_source=None, analytics=None, events=None,
             **runner_options) -> dict:
    """Run ``bundle`` on ``source`` (a URI, see :func:`~edgekit.stream.sources.open_source`, or a list of
    them, each ``URI`` or ``NAME=URI``) and the sources of ``sources_file``, until every source has ended,
    a limit is reached or a signal arrives; return the summary (with its one-line ``text``).

    Several sources are batched: one runner call per batch (:mod:`~edgekit.stream.mux`, ``batch_timeout``
    seconds at most for live sources); on TensorRT the engine's profile is built for the source count.
    ``width``, ``height``, ``fps``, ``realtime`` and ``loop`` apply to every source a sources file does
    not set them for. ``allow_missing``: a source that does not open at the start is logged and left out
    (a live one keeps trying) instead of ending the run. ``per_source`` (name -> list of stages) adds
    stages to each source's chain (:mod:`~edgekit.stream.per_source`), ahead of its recording and of
    the run-wide outputs.
    ``precision`` ``auto`` runs the fastest model that passed its accuracy gate; ``runner_options`` go to
    :func:`~edgekit.backends.select.open_runner` (``allow_failed_gate`` included). The chosen model and
    why are logged and shown in ``/metrics`` and ``/status.json``. ``console`` prints the results on stdout
    (:class:`~edgekit.stream.console.ConsoleSink`). ``analytics`` (an
    :class:`~edgekit.analytics.config.AnalyticsConfig`) tracks each source's detections and counts its
    lines and zones, as the first stage of its chain; ``events`` (an
    :class:`~edgekit.events.delivery.EventSink`) sends the events out."""
    from edgekit.atomic import refuse_inputs
    from edgekit.backends.select import open_runner
    from edgekit.bundle import Bundle
    from edgekit.service.notify import Notifier
    from edgekit.stream import postprocess
    from edgekit.stream.infer import engine_profile
    from edgekit.stream.per_source import PerSource
    from edgekit.stream.pipeline import Pipeline
    from edgekit.stream.server import StreamServer
    from edgekit.stream.sinks import DisplaySink, JsonSink
    from edgekit.stream.source_specs import specs

    bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    uris = [] if source is None else list(source) if isinstance(source, (list, tuple)) else [source]
    chosen = specs([str(u) for u in uris], dict(realtime=realtime, loop=loop, fps=fps, width=width, height=height),
                   sources_file)
    names = [spec.name for spec in chosen]
    several = len(chosen) > 1
    refuse_inputs({"--json": json_path,
                   **{f"--record ({n})" if several else "--record": p for n, p in record_paths(record, names).items()}},
                  {f"SOURCE {spec.name}" if several else "SOURCE": spec.uri for spec in chosen})
    post = postprocess.for_bundle(bundle, top_k=top_k)
    if runner_options.get("batch") is None:
        runner_options["batch"] = engine_profile(len(chosen), bundle.input["shape"])
    runner = open_runner(bundle, backend, precision, **runner_options)  # refuses a failed gate before opening anything
    analytics_stage = None
    if analytics is not None:
        from edgekit.analytics.stage import Analytics
        from edgekit.errors import UsageError

        if bundle.task != "detection":
            raise UsageError(f"--track, --line and --zone need a detection bundle; {bundle.path} is {bundle.task}")
        analytics.check_sources(names)
        analytics_stage = Analytics(analytics)
    captures = open_captures(chosen, timeout, allow_missing)
    sinks, chains = [], [per_source] if per_source is not None else []
    if analytics_stage is not None:
        chains.insert(0, analytics_stage.stages)
    if record:
        recorder = recording(record, names)
        if callable(recorder):
            chains.append(recorder)
        else:
            sinks.append(recorder)
    if chains:
        sinks.insert(0, PerSource(lambda name: [stage for chain in chains for stage in chain(name)]))
    if events is not None:
        sinks.insert(1 if chains else 0, events)
    if json_path:
        sinks.append(JsonSink(json_path))
    if serve:
        sinks.append(StreamServer(serve))
    if display:
        sinks.append(DisplaySink())
    if console:
        from edgekit.stream.console import ConsoleSink

        sinks.append(ConsoleSink())
    pipeline = Pipeline(
        bundle, captures, runner, post, sinks, max_frames=max_frames, duration=duration,
        notifier=notifier or Notifier(), log_every=log_every, batch_timeout=batch_timeout, missing_ok=allow_missing,
    )
    if runner.choice is not None:
        pipeline.metrics.model = runner.choice.to_dict()
    if analytics_stage is not None:
        pipeline.metrics.exporters.append(analytics_stage)
    with stop_on_signals(pipeline):
        summary = pipeline.run()
    summary["text"] = summary_text(summary)
    return summary

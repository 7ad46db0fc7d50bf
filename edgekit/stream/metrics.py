"""Loop metrics: per-stage latency percentiles, FPS, drops, reconnects and results per label, in total
and per source (frames, drops, reconnects, end-to-end latency, state); Prometheus text format."""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

STAGES = ("capture", "preprocess", "infer", "postprocess", "end_to_end")
QUANTILES = (0.5, 0.9, 0.99)


class SourceStats:
    """One source's counters, state (a capture state) and recent end-to-end latencies (ms)."""

    def __init__(self, window: int):
        self.frames = 0
        self.drops = 0
        self.reconnects = 0
        self.state = "starting"
        self.latency = deque(maxlen=window)

    def to_dict(self) -> dict:
        values = np.fromiter(self.latency, float)
        lat = {f"p{round(100 * q)}": round(float(v), 3) for q, v in
               zip(QUANTILES, np.percentile(values, [100 * q for q in QUANTILES]))} if values.size else {}
        return {"state": self.state, "frames": self.frames, "drops": self.drops, "reconnects": self.reconnects,
                "end_to_end_ms": lat}


class Metrics:
    """Thread-safe counters and a sliding window of the last ``window`` latencies per stage (ms);
    the same per source for ``sources`` (names, in order) and any other source a frame names."""

    def __init__(self, sources=(), window: int = 10000, fps_window: float = 5.0):
        self.started = time.monotonic()
        self.frames = 0
        self.drops = 0
        self.reconnects = 0
        self._window = min(window, 1000)
        self.sources: dict[str, SourceStats] = {str(n): SourceStats(self._window) for n in sources}
        self._lat = {stage: deque(maxlen=window) for stage in STAGES}
        self._sums = dict.fromkeys(STAGES, 0.0)
        self._done = deque()
        self._fps_window = fps_window
        self._label_totals: dict[str, int] = {}
        self._label_latest: dict[str, int] = {}
        self._lock = threading.Lock()
        self.model: dict = {}  # the model that runs and why: backend, key, precision, reason (select.Choice)
        # more figures (analytics, event delivery): objects with status() -> {key: JSON} and prometheus(prefix) -> lines
        self.exporters: list = []

    def add(self, latency_ms: dict[str, float], now: float | None = None, source: str | None = None) -> None:
        """Record one finished frame (of ``source``, when given)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self.frames += 1
            if source is not None:
                stats = self.sources.setdefault(source, SourceStats(self._window))
                stats.frames += 1
                if "end_to_end" in latency_ms:
                    stats.latency.append(latency_ms["end_to_end"])
            for stage in STAGES:
                if stage in latency_ms:
                    self._lat[stage].append(latency_ms[stage])
                    self._sums[stage] += latency_ms[stage]
            self._done.append(now)
            while self._done and now - self._done[0] > self._fps_window:
                self._done.popleft()

    def note_sources(self, captures) -> None:
        """Take each capture's drops, reconnects and state; the totals are their sums."""
        with self._lock:
            for c in captures:
                stats = self.sources.setdefault(c.name, SourceStats(self._window))
                stats.drops, stats.reconnects, stats.state = c.drops, c.reconnects, c.state
            self.drops = sum(s.drops for s in self.sources.values())
            self.reconnects = sum(s.reconnects for s in self.sources.values())

    def count(self, results: list[dict]) -> None:
        """Count one frame's results by ``label``: objects for detection, reported classes for classification."""
        latest: dict[str, int] = {}
        for r in results:
            latest[str(r["label"])] = latest.get(str(r["label"]), 0) + 1
        with self._lock:
            for label in self._label_latest:
                self._label_latest[label] = 0
            for label, n in latest.items():
                self._label_totals[label] = self._label_totals.get(label, 0) + n
                self._label_latest[label] = n

    def fps(self) -> float:
        """Frames per second over the last few seconds."""
        with self._lock:
            if len(self._done) < 2:
                return 0.0
            span = self._done[-1] - self._done[0]
            return (len(self._done) - 1) / span if span > 0 else 0.0

    def percentiles(self, stage: str) -> dict[str, float]:
        """``p50``, ``p90``, ``p99`` and ``mean`` of a stage's recent latencies (ms); empty if none."""
        with self._lock:
            values = np.fromiter(self._lat[stage], float)
        if not values.size:
            return {}
        q = np.percentile(values, [100 * q for q in QUANTILES])
        return {**{f"p{round(100 * k)}": float(v) for k, v in zip(QUANTILES, q)}, "mean": float(values.mean())}

    def snapshot(self) -> dict:
        """Everything, as a JSON-able dict."""
        elapsed = time.monotonic() - self.started
        return {
            "frames": self.frames,
            "elapsed_s": round(elapsed, 3),
            "fps": round(self.fps(), 2),
            "average_fps": round(self.frames / elapsed, 2) if elapsed > 0 else 0.0,
            "drops": self.drops,
            "reconnects": self.reconnects,
            "latency_ms": {stage: {k: round(v, 3) for k, v in self.percentiles(stage).items()} for stage in STAGES},
            "results": self.label_counts(),
            "sources": self.source_snapshot(),
            **({"model": dict(self.model)} if self.model else {}),
            **{k: v for e in self.exporters for k, v in e.status().items()},
        }

    def source_snapshot(self) -> dict:
        """``{name: {"state", "frames", "drops", "reconnects", "end_to_end_ms"}}`` per source."""
        with self._lock:
            return {name: stats.to_dict() for name, stats in self.sources.items()}

    def label_counts(self) -> dict:
        """``{"total": {label: n}, "latest": {label: n}}``: results per label so far and in the latest frame."""
        with self._lock:
            return {"total": dict(self._label_totals), "latest": dict(self._label_latest)}

    def line(self) -> str:
        """One log line: FPS, infer and end-to-end latency, drops."""
        infer, e2e = self.percentiles("infer"), self.percentiles("end_to_end")
        text = f"{self.fps():.1f} fps, {self.frames} frames"
        if infer:
            text += f", infer p50 {infer['p50']:.1f} ms, end-to-end p50 {e2e['p50']:.1f} p99 {e2e['p99']:.1f} ms"
        return text + f", {self.drops} dropped" + (f", {self.reconnects} reconnects" if self.reconnects else "")

    def _model_info(self, prefix: str) -> list[str]:
        if not self.model:
            return []
        labels = ",".join(f'{k}="{_label(self.model.get(k, ""))}"' for k in ("backend", "key", "precision", "reason"))
        return [f"# HELP {prefix}_model_info The bundle model that runs, and why it was chosen.",
                f"# TYPE {prefix}_model_info gauge", f"{prefix}_model_info{{{labels}}} 1"]

    def prometheus(self, prefix: str = "edgekit") -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        out = [
            f"# HELP {prefix}_frames_total Frames processed.",
            f"# TYPE {prefix}_frames_total counter",
            f"{prefix}_frames_total {self.frames}",
            f"# HELP {prefix}_dropped_frames_total Frames dropped to keep latency bounded.",
            f"# TYPE {prefix}_dropped_frames_total counter",
            f"{prefix}_dropped_frames_total {self.drops}",
            f"# HELP {prefix}_source_reconnects_total Times a lost live source was reopened.",
            f"# TYPE {prefix}_source_reconnects_total counter",
            f"{prefix}_source_reconnects_total {self.reconnects}",
            f"# HELP {prefix}_fps Frames per second over the last {self._fps_window:g} s.",
            f"# TYPE {prefix}_fps gauge",
            f"{prefix}_fps {self.fps():.3f}",
            *self._model_info(prefix),
            f"# HELP {prefix}_stage_latency_seconds Per-stage latency of recent frames.",
            f"# TYPE {prefix}_stage_latency_seconds summary",
        ]
        for stage in STAGES:
            p = self.percentiles(stage)
            for q in QUANTILES:
                if p:
                    out.append(f'{prefix}_stage_latency_seconds{{stage="{stage}",quantile="{q}"}} '
                               f"{p[f'p{round(100 * q)}'] / 1000:.6f}")
            with self._lock:
                total, count = self._sums[stage] / 1000, self.frames
            out.append(f'{prefix}_stage_latency_seconds_sum{{stage="{stage}"}} {total:.6f}')
            out.append(f'{prefix}_stage_latency_seconds_count{{stage="{stage}"}} {count}')
        counts = self.label_counts()
        if counts["total"]:
            out += [
                f"# HELP {prefix}_results_total Results reported per label (objects for detection, classes for classification).",
                f"# TYPE {prefix}_results_total counter",
                *(f'{prefix}_results_total{{label="{_label(k)}"}} {v}' for k, v in sorted(counts["total"].items())),
                f"# HELP {prefix}_frame_results Results per label in the latest frame.",
                f"# TYPE {prefix}_frame_results gauge",
                *(f'{prefix}_frame_results{{label="{_label(k)}"}} {v}' for k, v in sorted(counts["latest"].items())),
            ]
        for exporter in self.exporters:
            out += exporter.prometheus(prefix)
        return "\n".join(out + self._source_series(prefix)) + "\n"

    def _source_series(self, prefix: str) -> list[str]:
        """Per-source series, labelled ``source="NAME"`` (the ``edgekit_stream_`` families)."""
        snap = self.source_snapshot()
        if not snap:
            return []
        p = f"{prefix}_stream"
        out = []
        for metric, key, kind, text in (("frames_total", "frames", "counter", "Frames processed"),
                                        ("dropped_frames_total", "drops", "counter", "Frames dropped"),
                                        ("reconnects_total", "reconnects", "counter", "Times the source was reopened")):
            out += [f"# HELP {p}_{metric} {text}, per source.", f"# TYPE {p}_{metric} {kind}"]
            out += [f'{p}_{metric}{{source="{_label(n)}"}} {v[key]}' for n, v in snap.items()]
        out += [f"# HELP {p}_latency_seconds End-to-end latency of recent frames, per source.",
                f"# TYPE {p}_latency_seconds gauge"]
        out += [f'{p}_latency_seconds{{source="{_label(n)}",quantile="{q}"}} {v["end_to_end_ms"][f"p{round(100 * q)}"] / 1000:.6f}'
                for n, v in snap.items() if v["end_to_end_ms"] for q in QUANTILES]
        out += [f"# HELP {p}_up 1 while the source is live; its state (starting, live, reconnecting, ended, failed) labels it.",
                f"# TYPE {p}_up gauge"]
        out += [f'{p}_up{{source="{_label(n)}",state="{v["state"]}"}} {int(v["state"] == "live")}' for n, v in snap.items()]
        return out


def _label(value) -> str:
    """A Prometheus label value: backslash, double quote and newline escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

"""``auto`` measured: time each usable bundle model on this device, briefly, and keep the fastest.

Static rules (int8 before fp32) are wrong often enough to matter: on an x86 CPU the quickstart's
int8_cpu ran at 0.72x FP32. So :func:`measured_choice` opens each candidate, runs a warm-up and a short
timed loop at batch 1, and picks the fastest, taking a model other than fp32 only when it beats fp32 by
more than :data:`NOISE` (so ``auto`` is never slower than FP32 beyond noise). The figures are cached
per bundle models + backend + device (``<cache>/auto/*.json``), logged, and kept in the Choice
(``/status.json`` shows them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.backends.base import Runner
from edgekit.bundle import Bundle
from edgekit.errors import EdgekitError

log = logging.getLogger(__name__)

NOISE = 0.05  # a candidate must beat fp32 by more than this fraction to replace it
WARMUP = 5
MIN_ITERATIONS = 20
BUDGET_S = 0.5  # timed seconds per candidate (at least MIN_ITERATIONS inferences)
CACHE_FORMAT = 1


def sample_batch(bundle: Bundle, batch: int, seed: int = 0) -> np.ndarray:
    """A batch of random frames through the bundle's preprocessing (the runtime's real input)."""
    h, w = bundle.preprocess.size
    frames = np.random.default_rng(seed).integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
    return bundle.preprocess.batch(frames).astype(np.dtype(bundle.input.get("dtype", "float32")))


def cache_path(bundle: Bundle, backend: str, device: str, keys: list[str], cache_dir: Path | None) -> Path:
    """Where the timings of ``keys`` of ``bundle`` on ``backend`` and ``device`` are kept."""
    from edgekit.backends.tensorrt.cache import default_cache_dir

    models = [[k, bundle.models.get(k, {}).get("sha256") or bundle.models.get(k, {}).get("path")] for k in keys]
    ident = json.dumps([CACHE_FORMAT, backend, device, models, bundle.input.get("shape")], sort_keys=True)
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return Path(cache_dir or default_cache_dir()) / "auto" / f"{bundle.path.name}-{backend}-{digest}.json"


def time_runner(runner: Runner, batch: np.ndarray, budget_s: float = BUDGET_S) -> float:
    """Median milliseconds per inference of an activated ``runner`` on ``batch`` after a warm-up."""
    for _ in range(WARMUP):
        runner.infer(batch)
    times: list[float] = []
    end = time.perf_counter() + budget_s
    while len(times) < MIN_ITERATIONS or time.perf_counter() < end:
        t0 = time.perf_counter()
        runner.infer(batch)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def pick(timings: dict[str, float], preference: list[str]) -> str:
    """The fastest key of ``timings``; fp32 unless another beats it by more than :data:`NOISE`.

    Among candidates within noise of each other the earlier in ``preference`` wins."""
    best = min(preference, key=lambda k: (timings[k], preference.index(k)))
    if "fp32" in timings and best != "fp32" and timings[best] > timings["fp32"] * (1 - NOISE):
        return "fp32"
    return best


def describe(timings: dict[str, float], chosen: str) -> str:
    """``"measured here (batch 1, median ms): int8_cpu 0.21, fp32 0.35; int8_cpu 1.67x fp32"``."""
    figures = ", ".join(f"{k} {v:.3g}" for k, v in sorted(timings.items(), key=lambda kv: kv[1]))
    text = f"measured here (batch 1, median ms): {figures}"
    if "fp32" in timings and chosen != "fp32":
        text += f"; {chosen} {timings['fp32'] / timings[chosen]:.2f}x fp32"
    elif chosen == "fp32" and len(timings) > 1:
        text += f"; none beats fp32 by more than {NOISE:.0%}"
    return text


def measured_choice(bundle: Bundle, candidates: list, open_candidate: Callable, device: str,
                    cache_dir: Path | None = None):
    """The fastest of ``candidates`` (``select.Choice`` objects, in the static order) on this device.

    ``open_candidate(choice)`` returns a not-yet-activated runner of that model. Timings come from the
    cache when present, else are measured now and stored (a failed store only costs a re-measurement).
    """
    from edgekit.atomic import write_json

    if len(candidates) < 2:
        return candidates[0]
    keys = [c.key for c in candidates]
    backend = candidates[0].backend
    path = cache_path(bundle, backend, device, keys, cache_dir)
    timings = _read(path, keys)
    if timings is None:
        batch = sample_batch(bundle, 1)
        timings = {}
        for choice in candidates:
            try:
                with open_candidate(choice) as runner:
                    timings[choice.key] = time_runner(runner, batch)
            except EdgekitError as exc:  # e.g. an engine this GPU cannot build: not a candidate here
                log.warning("auto: %s not measured: %s", choice.key, exc)
        if not timings:
            raise EdgekitError("auto: no candidate model could be opened here (see the warnings above)")
        if len(timings) < len(keys):
            candidates = [c for c in candidates if c.key in timings]
            keys = [c.key for c in candidates]
        try:
            write_json(path, {"format": CACHE_FORMAT, "device": device, "timings_ms": timings})
        except EdgekitError as exc:
            log.warning("auto: timings not cached: %s", exc)
    else:
        log.debug("auto: timings from %s", path)
    key = pick(timings, keys)
    chosen = candidates[keys.index(key)]
    rest = chosen.reason[len('auto: '):] if chosen.reason.startswith('auto: ') else chosen.reason
    reason = f"auto: {describe(timings, key)}; {rest}"
    return replace(chosen, reason=reason, measured_ms={k: round(v, 4) for k, v in timings.items()})


def _read(path: Path, keys: list[str]) -> dict[str, float] | None:
    try:
        data = json.loads(path.read_text("utf-8"))
        timings = {k: float(data["timings_ms"][k]) for k in keys}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return timings if data.get("format") == CACHE_FORMAT and all(v > 0 for v in timings.values()) else None

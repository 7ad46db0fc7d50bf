"""What tracking, a counting line and MQTT events cost the loop: FPS with and without them, side by side.

Runs the tracking sample (``edgekit sample-data --task track``: 320x240, its card detector on ONNX
Runtime) through :func:`edgekit.stream.loop.run_loop` for ``--frames`` frames (the video looped),
in rounds of plain runs, ``--track --line door=...`` runs and ``--track --line door=... --mqtt`` runs
(a private mosquitto on 127.0.0.1), and prints the median FPS of each, their ratios to the plain
run, and what the tracker and line cost per frame by themselves (ms, median of the runs). The loop
does analytics on its output thread while the next frame is inferred, so they cost throughput only
when that thread is the slower one. ``--threads N`` sets ONNX Runtime's threads (a slower detector).

    python benchmarks/bench_analytics.py [--frames 600] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _broker(folder: Path):
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if exe is None:
        return None, None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = folder / "mosquitto.conf"
    root = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest none\n{root}")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc, port


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    args = ap.parse_args()
    logging.getLogger("edgekit").setLevel(logging.ERROR)

    from edgekit.analytics.config import build
    from edgekit.events.delivery import EventSink
    from edgekit.events.mqtt import MqttSender
    from edgekit.sample_tracking import LINE, write_tracking_sample
    from edgekit.stream.loop import run_loop

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_tracking_sample(tmp / "data")
        broker, port = _broker(tmp)
        line = "door=" + ",".join(f"{v:g}" for v in LINE[1])
        fps = {"plain": [], "track+line": [], "track+line+mqtt": []}
        per_frame = []
        produced = 0
        try:
            for r in range(args.repeats):
                modes = list(fps)
                for mode in modes[r % 3:] + modes[: r % 3]:  # a different order each round: no mode always first
                    extra = {}
                    if mode != "plain":
                        extra["analytics"] = build([line])
                    if mode.endswith("mqtt"):
                        extra["events"] = EventSink([MqttSender(f"mqtt://127.0.0.1:{port or 1}/bench", device="bench")],
                                                    tmp / "spool", drain_s=2.0)
                    summary = run_loop(data / "cards.bundle", str(data / "track.mp4"), loop=True, max_frames=args.frames,
                                       log_every=1e9, intra_op_threads=args.threads, **extra)
                    fps[mode].append(summary["average_fps"])
                    produced += extra["events"].produced if "events" in extra else 0
                per_frame.append(_analytics_ms(data, line))
        finally:
            if broker is not None:
                broker.terminate()
    med = {k: statistics.median(v) for k, v in fps.items()}
    print(f"loop FPS, tracking sample 320x240, card detector on ONNX Runtime, {args.frames} frames x {args.repeats} "
          f"(median; python {sys.version.split()[0]})")
    for k, v in fps.items():
        print(f"  {k:18s} {med[k]:7.1f} fps   runs: {', '.join(f'{x:.1f}' for x in v)}")
    where = "a local mosquitto" if broker is not None else "the spool only (no mosquitto)"
    for k in ("track+line", "track+line+mqtt"):
        print(f"  ratio {k:18s} {med[k] / med['plain']:.3f}")
    print(f"  events to {where}: {produced}; tracker + line alone: {statistics.median(per_frame):.2f} ms per frame")


def _analytics_ms(data: Path, line: str) -> float:
    """Median ms per frame of Analytics.process over the sample's true boxes (as detections)."""
    import json

    from edgekit.analytics.config import build
    from edgekit.analytics.stage import Analytics

    truth = json.loads((data / "track.truth.json").read_text())
    frames = [[{"label": o["label"], "class": 0, "score": 0.95, "box": o["box"]} for o in f] for f in truth["frames"]]
    stage = Analytics(build([line]))
    times = []
    for i, dets in enumerate(frames):
        t = time.perf_counter()
        stage.process("bench", dets, i, time.time())
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


if __name__ == "__main__":
    main()

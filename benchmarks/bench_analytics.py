"""What tracking, a counting line and MQTT events cost the loop: FPS with and without them, side by side.

Runs the tracking sample (``edgekit sample-data --task track``: 320x240, its card detector on ONNX
Runtime) through :func:`edgekit.stream.loop.run_loop` for ``--frames`` frames (the video looped),
alternating plain runs and ``--track --line door=... --mqtt`` runs (a private mosquitto on
127.0.0.1; without one, events go to the spool only and the line says so), and prints the median
FPS of each and their ratio.

    python benchmarks/bench_analytics.py [--frames 600] [--repeats 3]
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
        fps = {"plain": [], "track+line+mqtt": []}
        produced = 0
        try:
            for r in range(args.repeats):
                for mode in fps:
                    extra = {}
                    if mode != "plain":
                        sink = EventSink([MqttSender(f"mqtt://127.0.0.1:{port or 1}/bench", device="bench")],
                                         tmp / "spool", drain_s=2.0)
                        extra = {"analytics": build([line]), "events": sink}
                    summary = run_loop(data / "cards.bundle", str(data / "track.mp4"), loop=True, max_frames=args.frames,
                                       log_every=1e9, **extra)
                    fps[mode].append(summary["average_fps"])
                    produced += extra["events"].produced if extra else 0
        finally:
            if broker is not None:
                broker.terminate()
    med = {k: statistics.median(v) for k, v in fps.items()}
    print(f"loop FPS, tracking sample 320x240, card detector on ONNX Runtime, {args.frames} frames x {args.repeats} "
          f"(median; python {sys.version.split()[0]})")
    for k, v in fps.items():
        print(f"  {k:18s} {med[k]:7.1f} fps   runs: {', '.join(f'{x:.1f}' for x in v)}")
    where = "a local mosquitto" if broker is not None else "the spool only (no mosquitto)"
    print(f"  ratio              {med['track+line+mqtt'] / med['plain']:.3f} (events to {where}: {produced})")


if __name__ == "__main__":
    main()

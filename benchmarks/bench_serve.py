"""``--serve`` under load: 50 concurrent loopback clients for 10 s; loop FPS with and without them.

Two ``edgekit run --serve`` processes in a row on the same looping video and bundle; the loop's
own frame count (``/status.json``) gives its FPS over a ``--seconds`` window: in one run with no
client, in the other while ``--clients`` threads (here, in this process) request
``/snapshot.jpg``, ``/metrics``, ``/status.json`` and ``/`` in turn, and every tenth one reads
``/stream.mjpg``. Printed: requests served, 503s, timeouts and other errors, and the loop FPS of
both runs side by side (median of ``--rounds``, alternating). Only 127.0.0.1 is used.

    python benchmarks/bench_serve.py                 # tiny bundle, 640x480 video paced at 30 fps
    python benchmarks/bench_serve.py --unpaced       # the loop as fast as it goes (CPU shared with clients)

Goals: zero timeouts; with clients the paced loop keeps its FPS.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np

from edgekit.tiny import write_tiny_bundle

SHORT = ("/snapshot.jpg", "/metrics", "/status.json", "/")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_video(path: Path, frames: int = 90, size=(480, 640)) -> Path:
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (size[1], size[0]))
    for i in range(frames):
        colour = np.array([(0, 0, 255), (0, 255, 0), (255, 0, 0)][i // 10 % 3], np.uint8)
        writer.write(np.clip(colour + rng.normal(0, 12, (*size, 3)), 0, 255).astype(np.uint8))
    writer.release()
    return path


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {"ok": 0, "503": 0, "timeout": 0, "error": 0, "stream_frames": 0}
        self.errors: list[str] = []

    def add(self, key: str, n: int = 1, detail: str | None = None) -> None:
        with self.lock:
            self.counts[key] += n
            if detail and len(self.errors) < 5:
                self.errors.append(detail)


def client(base: str, index: int, stop: threading.Event, tally: Tally, timeout: float) -> None:
    i = index
    while not stop.is_set():
        stream = index % 10 == 0
        path = "/stream.mjpg" if stream else SHORT[i % len(SHORT)]
        i += 1
        try:
            with urllib.request.urlopen(base + path, timeout=timeout) as resp:
                if stream:
                    while not stop.is_set():
                        line = resp.readline()
                        if not line:
                            break
                        if line.startswith(b"Content-Length:"):
                            tally.add("stream_frames")
                else:
                    resp.read()
            tally.add("ok")
        except urllib.error.HTTPError as exc:
            tally.add("503" if exc.code == 503 else "error", detail=f"{path}: HTTP {exc.code}")
        except (TimeoutError, socket.timeout) as exc:
            tally.add("timeout", detail=f"{path}: {exc}")
        except urllib.error.URLError as exc:
            key = "timeout" if isinstance(exc.reason, (TimeoutError, socket.timeout)) else "error"
            tally.add(key, detail=f"{path}: {exc.reason}")
        except OSError as exc:
            tally.add("error", detail=f"{path}: {exc}")


def frames_at(base: str) -> tuple[int, float]:
    """The loop's frame count (from /status.json) and when it was read."""
    with urllib.request.urlopen(base + "/status.json", timeout=10) as resp:
        return json.loads(resp.read())["frames"], time.monotonic()


def run_once(bundle: Path, video: Path, seconds: float, clients: int, paced: bool, timeout: float):
    """Loop FPS over a ``seconds`` window (frames counted by the loop itself) and the clients' tally."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "edgekit", "run", str(bundle), "--source", str(video), "--loop",
           "--serve", f"127.0.0.1:{port}"] + (["--realtime"] if paced else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:  # wait for the server and the loop's first frames
            try:
                if frames_at(base)[0] > 10:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"edgekit run did not come up:\n{proc.stderr.read()[-2000:]}")
            time.sleep(0.1)
        tally, stop = Tally(), threading.Event()
        threads = [threading.Thread(target=client, args=(base, i, stop, tally, timeout), daemon=True)
                   for i in range(clients)]
        f0, t0 = frames_at(base)
        for t in threads:
            t.start()
        time.sleep(seconds)
        f1, t1 = frames_at(base)
        stop.set()
        for t in threads:
            t.join(timeout + 1)
    finally:
        proc.terminate()
        proc.wait(30)
    return (f1 - f0) / (t1 - t0), tally


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, help="default: the tiny colour classifier at 224x224")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=5.0, help="client timeout, seconds")
    ap.add_argument("--unpaced", action="store_true", help="process the video as fast as possible")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-serve-") as tmp:
        tmp = Path(tmp)
        bundle = args.bundle or write_tiny_bundle(tmp / "bundle", size=224).path
        video = write_video(tmp / "video.avi")
        quiet, loaded, tallies = [], [], []
        for _ in range(args.rounds):
            quiet.append(run_once(bundle, video, args.seconds, 0, not args.unpaced, args.timeout)[0])
            fps, tally = run_once(bundle, video, args.seconds, args.clients, not args.unpaced, args.timeout)
            loaded.append(fps)
            tallies.append(tally)
    total = {k: sum(t.counts[k] for t in tallies) for k in tallies[0].counts}
    q, l = statistics.median(quiet), statistics.median(loaded)
    print(f"--serve on 127.0.0.1, {args.clients} clients for {args.seconds:g} s x {args.rounds} round(s), "
          f"{'unpaced' if args.unpaced else 'paced at 30 fps'}")
    print(f"  requests answered   {total['ok']}")
    print(f"  503 (over capacity) {total['503']}")
    print(f"  timeouts            {total['timeout']}")
    print(f"  other errors        {total['error']}")
    print(f"  MJPEG frames read   {total['stream_frames']}")
    print(f"  loop FPS, no clients   {q:.1f}   (rounds: {', '.join(f'{v:.1f}' for v in quiet)})")
    print(f"  loop FPS, {args.clients} clients   {l:.1f}   (rounds: {', '.join(f'{v:.1f}' for v in loaded)})")
    print(f"  ratio                  {l / q:.2f}")
    for t in tallies:
        for line in t.errors:
            print(f"  e.g. {line}")


if __name__ == "__main__":
    main()

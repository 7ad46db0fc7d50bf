"""Many sources, one engine: the batched loop against the model alone and against one process per source.

For N = 1, 2, 4, 8 video files (MJPG, ``--video-size``, read as fast as they decode: faster than
the model), side by side in one run, in rounds:

* batched loop: ``edgekit run BUNDLE f1 .. fN`` (in process, ``run_loop``): aggregate frames/s over
  every source, and each source's end-to-end latency p50/p99;
* ``edgekit bench --batch N`` of the same bundle, backend, precision and threads: images/s (the
  model alone on a preprocessed batch of N, the ceiling for the loop);
* N separate ``edgekit run BUNDLE fi`` processes started together: their frames over the span from
  the first to the last frame any of them wrote (from the JSON lines' wall-clock stamps).

    python benchmarks/bench_multisource.py            # a small CNN at 224x224, 1 ONNX Runtime thread each
    python benchmarks/bench_multisource.py --bundle BUNDLE --backend tensorrt --precision fp16

Goal: batched loop / ``bench --batch N`` >= 0.9 at N = 4. Every process (and the loop) gets
``--threads`` intra-op threads, so N processes may use up to N times the cores of the one loop.
The loop also decodes and preprocesses every frame, which ``bench`` does not: where the CPU runs
the model too and no core is spare, that work comes out of the model's share (the script prints
its CPU cost per frame beside the model's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from edgekit.bench import bench_bundle
from edgekit.bundle import Bundle
from edgekit.stream.loop import run_loop

sys.path.insert(0, str(Path(__file__).parent))
from bench_loop import heavy_bundle  # noqa: E402  (the same small CNN as the loop benchmark)


def write_videos(folder: Path, n: int, frames: int, size: tuple[int, int]) -> list[Path]:
    """``n`` MJPG videos of ``frames`` noise frames of ``size`` (width, height) each."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"v{i}.avi"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, size)
        base = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        for k in range(frames):
            writer.write(np.roll(base, k * 7, axis=1))
        writer.release()
        paths.append(path)
    return paths


def cpu_ms_per_frame(bundle, video: Path) -> float:
    """CPU milliseconds to decode and preprocess one frame of ``video``."""
    cap = cv2.VideoCapture(str(video))
    t0, n = time.process_time(), 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        bundle.preprocess(frame)
        n += 1
    cap.release()
    return (time.process_time() - t0) * 1000 / max(n, 1)


def batched(bundle, videos, args, out: Path) -> tuple[float, dict]:
    summary = run_loop(bundle, [str(v) for v in videos], backend=args.backend, precision=args.precision,
                       json_path=str(out), log_every=1e9, intra_op_threads=args.threads or None)
    frames = sum(v["frames"] for v in summary["sources"].values())
    return frames / summary["elapsed_s"], summary["sources"]


def separate(bundle_path: Path, videos, args, folder: Path) -> float:
    """N processes, one per video, started together: frames per second over their common span."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs, outs = [], []
    for i, video in enumerate(videos):
        out = folder / f"sep{i}.jsonl"
        cmd = [sys.executable, "-m", "edgekit", "run", str(bundle_path), str(video), "--json", str(out),
               "--backend", args.backend, "--precision", args.precision, "--log-every", "1000000"]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        outs.append(out)
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"a separate run failed: {err.strip().splitlines()[-1]}")
    stamps = [json.loads(line)["timestamps"]["postprocessed"] for out in outs for line in out.read_text().splitlines()]
    return (len(stamps) - 1) / (max(stamps) - min(stamps)) if len(stamps) > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", help="bundle folder (default: a small CNN at --size)")
    ap.add_argument("--size", type=int, default=224, help="input side of the default CNN")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads per run (0: its choice)")
    ap.add_argument("--sources", default="1,2,4,8", help="the N to measure")
    ap.add_argument("--frames", type=int, default=40, help="frames per video")
    ap.add_argument("--video-size", default="320x240", help="WIDTHxHEIGHT of the videos")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--skip-separate", action="store_true", help="leave out the N separate processes")
    args = ap.parse_args()

    counts = [int(n) for n in args.sources.split(",")]
    size = tuple(int(v) for v in args.video_size.lower().split("x"))
    med = statistics.median
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = Bundle.load(args.bundle) if args.bundle else heavy_bundle(tmp / "cnn", args.size)
        videos = write_videos(tmp, max(counts), args.frames, size)
        source_cpu = cpu_ms_per_frame(bundle, videos[0])
        rows = []
        for n in counts:
            loop_fps, model_fps, sep_fps, p50, p99 = [], [], [], [], []
            for _ in range(args.rounds):
                fps, sources = batched(bundle, videos[:n], args, tmp / "loop.jsonl")
                loop_fps.append(fps)
                p50.append(med(v["end_to_end_ms"]["p50"] for v in sources.values()))
                p99.append(max(v["end_to_end_ms"]["p99"] for v in sources.values()))
                m = bench_bundle(bundle, args.backend, args.precision, batch=n, warmup=5, duration=3.0,
                                 intra_op_threads=args.threads or None)
                model_fps.append(m.images_per_s)
                model_ms = 1000 / m.images_per_s
                if not args.skip_separate:
                    sep_fps.append(separate(bundle.path, videos[:n], args, tmp))
            row = (n, med(loop_fps), med(model_fps), med(sep_fps) if sep_fps else float("nan"), med(p50), med(p99))
            rows.append(row)
            print(f"N={n}: loop {row[1]:.1f} frames/s, bench --batch {n} {row[2]:.1f} images/s, "
                  f"{n} processes {row[3]:.1f} frames/s", flush=True)

    print(f"\nbundle: {args.bundle or f'small CNN, {args.size}x{args.size} input'}; backend {args.backend} "
          f"{args.precision}, {args.threads or 'default'} intra-op thread(s) per run; {args.frames} frames of "
          f"{size[0]}x{size[1]} MJPG per source; medians of {args.rounds} round(s); {os.cpu_count()} CPUs")
    print(f"decode + preprocess: {source_cpu:.2f} CPU ms per frame; the model: {model_ms:.2f} ms per image "
          f"(last bench, batch {counts[-1]})")
    print(f"{'N':>3} {'loop f/s':>9} {'bench img/s':>12} {'loop/bench':>10} {'N procs f/s':>12} {'loop/procs':>10} "
          f"{'e2e p50 ms':>10} {'e2e p99 ms':>10}")
    for n, loop, model, sep, p50, p99 in rows:
        print(f"{n:>3} {loop:>9.1f} {model:>12.1f} {loop / model:>10.2f} {sep:>12.1f} {loop / sep:>10.2f} "
              f"{p50:>10.1f} {p99:>10.1f}")
    print("e2e: per-source end-to-end latency (median over sources of p50; worst source's p99); files are read "
          "as fast as they decode, so it includes the wait in the loop's bounded queues.")


if __name__ == "__main__":
    main()

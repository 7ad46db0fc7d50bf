"""`edgekit bench`/`run` with no --precision (auto, measured) against --precision fp32, on three bundles.

The bundles are the quickstart classifier (examples/quickstart.sh: the small CNN on ``edgekit sample-data``
digits), a MobileNetV2 at 224x224 on the same digits, and the detection quickstart
(examples/quickstart_detect.sh: the small detector on ``edgekit sample-data --task detect``), each
exported and quantized with ``--cpu-variant``. Models are trained briefly (MobileNetV2 for one epoch on
20 images per class): speed is the point here, and the gates judge agreement with their FP32 model. ONNX Runtime on the CPU (the
machine without TensorRT); on a Jetson pass ``--backend tensorrt``.

Per bundle and round, auto and fp32 alternate: ``bench_bundle`` (model only, batch 1, for
``--bench-seconds``) and the camera loop on the bundle's val video (for ``--loop-seconds``); figures are
medians over rounds, ratios the median of each round's auto/fp32 (measured back to back). Where auto
runs fp32 itself, its ratio shows the machine's noise. The goal
(issue #18): auto never below 0.95x fp32, and >= 1.5x where the int8 CPU variant is faster.

    nice python benchmarks/bench_auto.py [--work DIR] [--rounds 5] [--loop-seconds 3] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build(work: Path, epochs: int) -> list[tuple[str, Path, Path]]:
    """(name, bundle, video) of the three bundles, made once per ``work``."""
    from edgekit.errors import GateError
    from edgekit.host.export import export_bundle
    from edgekit.quant.quantize import quantize_bundle

    data, det_data = work / "data", work / "data-detect"
    if not data.exists():
        from edgekit.sample_data import write_sample_data

        write_sample_data(data)
    if not det_data.exists():
        from edgekit.sample_data import write_detection_sample_data

        write_detection_sample_data(det_data)
    made = []
    for name, train_data, calib, video in (
        ("quickstart classifier", data / "train", data / "train", data / "val.mp4"),
        ("MobileNetV2 224", data / "train", data / "train", data / "val.mp4"),
        ("detection quickstart", det_data / "yolo", det_data / "yolo" / "images" / "train", det_data / "val.mp4"),
    ):
        slug = name.lower().replace(" ", "-")
        bundle = work / f"{slug}.bundle"
        if not (bundle / "edgekit.json").exists():
            model = work / f"{slug}.keras"
            if name.startswith("detection"):
                from edgekit.host.train_detect import train_detector

                # the detection quickstart's training: fewer epochs leave a detector that finds nothing to gate
                train_detector(train_data, model, image_size=128, epochs=20, flip=False, force=True)
            elif name.startswith("MobileNetV2"):  # one epoch on 20 images per class: its speed, not its skill
                from edgekit.host.train import train

                train(_subset(train_data, work / "data-mobilenetv2", 20), model, arch="mobilenetv2", image_size=224,
                      epochs=1, batch_size=32, seed=0)
            else:
                from edgekit.host.train import train

                train(train_data, model, arch="small", image_size=32, epochs=epochs, batch_size=32, seed=0)
            export_bundle(model, bundle, target="jetpack-6.1", force=True)
            try:
                quantize_bundle(bundle, calib, cpu_variant=True, progress=False)
            except GateError as exc:  # kept, marked unusable: auto then leaves it out, and says so
                print(f"bench_auto: {name}: {exc}", file=sys.stderr)
        made.append((name, bundle, video))
    return made


def _subset(src: Path, dst: Path, per_class: int) -> Path:
    """The first ``per_class`` images of each class folder of ``src``, linked under ``dst``."""
    for folder in sorted(p for p in src.iterdir() if p.is_dir()):
        (dst / folder.name).mkdir(parents=True, exist_ok=True)
        for image in sorted(folder.iterdir())[:per_class]:
            link = dst / folder.name / image.name
            if not link.exists():
                link.symlink_to(image.resolve())
    return dst


def measure(name: str, bundle_path: Path, video: Path, args) -> dict:
    from edgekit.backends.select import open_runner
    from edgekit.bench import bench_bundle
    from edgekit.bundle import Bundle
    from edgekit.stream.loop import run_loop

    bundle = Bundle.load(bundle_path)
    with open_runner(bundle, args.backend, "auto") as runner:  # measures once; later opens read the cache
        choice = runner.choice
    loop_fps, model_ips = {"auto": [], "fp32": []}, {"auto": [], "fp32": []}
    for _ in range(args.rounds):
        for precision in ("auto", "fp32"):
            result = bench_bundle(bundle, args.backend, precision, 1, 20, None, args.bench_seconds)
            model_ips[precision].append(result.images_per_s)
            summary = run_loop(bundle, str(video), backend=args.backend, precision=precision, loop=True,
                               duration=args.loop_seconds)
            loop_fps[precision].append(summary["average_fps"])
    series = (("model_images_per_s", model_ips), ("loop_fps", loop_fps))
    med = {name: {p: statistics.median(v) for p, v in values.items()} for name, values in series}
    # auto and fp32 of one round ran back to back: their ratio cancels the machine's slower drifts
    ratios = {name: statistics.median(a / f for a, f in zip(values["auto"], values["fp32"])) for name, values in series}
    return {"bundle": name, "path": str(bundle_path), "auto_model": choice.key, "auto_reason": choice.reason,
            "measured_ms": choice.measured_ms, "median": med, "auto_over_fp32": ratios}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="Folder for the data, bundles and caches (kept; default: a temporary one).")
    parser.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--loop-seconds", type=float, default=3.0, help="Seconds per loop run (the video looped).")
    parser.add_argument("--bench-seconds", type=float, default=1.0, help="Seconds per model-only bench run.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        os.environ["EDGEKIT_CACHE_DIR"] = str(work / "cache")  # auto's timings start fresh with the work folder
        rows = [measure(name, bundle, video, args) for name, bundle, video in build(work, args.epochs)]
    if args.json:
        print(json.dumps({"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                          "backend": args.backend, "rounds": args.rounds, "rows": rows}, indent=2))
        return 0
    print(f"{args.backend} on {platform.processor() or platform.machine()} ({os.cpu_count()} cpus), "
          f"{args.rounds} rounds, auto and fp32 alternating; medians, ratios: median of per-round auto/fp32")
    print(f"{'bundle':24s}{'auto runs':>10s}{'model img/s auto':>18s}{'fp32':>9s}{'ratio':>7s}"
          f"{'loop fps auto':>15s}{'fp32':>8s}{'ratio':>7s}")
    for r in rows:
        m, q = r["median"], r["auto_over_fp32"]
        print(f"{r['bundle']:24s}{r['auto_model']:>10s}{m['model_images_per_s']['auto']:18.1f}"
              f"{m['model_images_per_s']['fp32']:9.1f}{q['model_images_per_s']:6.2f}x"
              f"{m['loop_fps']['auto']:15.1f}{m['loop_fps']['fp32']:8.1f}{q['loop_fps']:6.2f}x")
    for r in rows:
        print(f"  {r['bundle']}: {r['auto_reason']}")
    worst = min(min(r["auto_over_fp32"].values()) for r in rows)
    print(f"lowest auto/fp32 ratio: {worst:.2f}x (goal: never below 0.95x; a row where auto runs fp32 "
          "compares fp32 with itself: its distance from 1.00x is noise)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`edgekit run` with no --precision (auto) against --precision fp32, on ONNX Runtime on the CPU.

The bundle is a MobileNetV2 trained on scikit-learn's handwritten digits (``edgekit sample-data``),
exported, and quantized with ``--cpu-variant`` (the int8_cpu model is gated on held-out images), so
``auto`` runs int8_cpu when it passed its gate. Each round runs the camera loop on the unseen val.mp4
(looped to ``--frames`` frames) and ``edgekit bench``'s model-only timing, auto and fp32 alternating;
figures are medians over rounds and the ratios are of those medians.

Throughput is the point here, not accuracy: a MobileNetV2 trained from scratch for a few epochs on
1,400 small digits is a weak classifier in inference mode (Keras's BatchNorm momentum of 0.999 leaves
its moving statistics unsettled), so its gate is passed by agreement with a weak FP32 model. The
compute, hence the ratio, is that of any MobileNetV2 at this size; pass ``--bundle`` to measure a
properly trained bundle.

    python benchmarks/bench_default_precision.py [--work DIR] [--image-size 96] [--epochs 4] [--rounds 5]
    python benchmarks/bench_default_precision.py --bundle BUNDLE --video VIDEO   # your own bundle
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


def build(work: Path, image_size: int, epochs: int) -> tuple[Path, Path]:
    """The gated MobileNetV2 digits bundle (made once per ``work``) and the val video."""
    data = work / "data"
    if not data.exists():
        from edgekit.sample_data import write_sample_data

        write_sample_data(data)
    bundle = work / f"mobilenetv2-{image_size}"
    if not (bundle / "edgekit.json").exists():
        from edgekit.errors import GateError
        from edgekit.host.export import export_bundle
        from edgekit.host.train import train
        from edgekit.quant.quantize import quantize_bundle

        model = work / f"mobilenetv2-{image_size}.keras"
        train(data / "train", model, arch="mobilenetv2", image_size=image_size, epochs=epochs, batch_size=32, seed=0)
        export_bundle(model, bundle, target="jetpack-6.1", force=True)
        try:
            quantize_bundle(bundle, data / "train", cpu_variant=True, progress=False)
        except GateError as exc:  # kept, marked unusable: auto then runs fp32, and the figures say so
            print(f"bench_default_precision: {exc}", file=sys.stderr)
    return bundle, data / "val.mp4"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="Folder for the data and bundle (kept; default: a temporary one).")
    parser.add_argument("--bundle", help="Measure this bundle instead of building one (with --video).")
    parser.add_argument("--video", help="The video the loop runs on, with --bundle.")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frames", type=int, default=300, help="Frames per loop run.")
    parser.add_argument("--iterations", type=int, default=200, help="Model-only inferences per bench run.")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its choice).")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    if args.bundle:
        if not args.video:
            parser.error("--bundle needs --video")
        return measure(Path(args.bundle), Path(args.video), args)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        bundle_path, video = build(work, args.image_size, args.epochs)
        return measure(bundle_path, video, args)


def measure(bundle_path: Path, video: Path, args) -> int:
    from edgekit.backends.select import choose_here
    from edgekit.bench import bench_bundle
    from edgekit.bundle import Bundle
    from edgekit.stream.loop import run_loop

    bundle = Bundle.load(bundle_path)
    auto = choose_here(bundle, "onnxruntime", "auto")
    threads = args.threads or None
    loop_fps, model_ips = {"auto": [], "fp32": []}, {"auto": [], "fp32": []}
    for _ in range(args.rounds):
        for precision in ("auto", "fp32"):
            summary = run_loop(bundle, str(video), backend="onnxruntime", precision=precision, loop=True,
                               max_frames=args.frames, intra_op_threads=threads)
            loop_fps[precision].append(summary["average_fps"])
            result = bench_bundle(bundle, "onnxruntime", precision, 1, 20, args.iterations, None,
                                  intra_op_threads=threads)
            model_ips[precision].append(result.images_per_s)
    med = {name: {p: statistics.median(v) for p, v in series.items()}
           for name, series in (("loop_fps", loop_fps), ("model_images_per_s", model_ips))}
    figures = {
        "bundle": str(bundle.path),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "auto_model": auto.key,
        "auto_reason": auto.reason,
        "int8_cpu_gate": bundle.models.get("int8_cpu", {}).get("gate"),
        "rounds": args.rounds,
        "frames": args.frames,
        "median": med,
        "auto_over_fp32": {name: m["auto"] / m["fp32"] for name, m in med.items()},
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"bundle {figures['bundle']}  ONNX Runtime CPU ({figures['cpu']}, {figures['cpus']} cpus), "
          f"{args.rounds} rounds, auto and fp32 alternating")
    print(f"auto runs {auto.key}: {auto.reason}")
    print(f"{'':8s}{'loop fps':>12s}{'model images/s':>17s}")
    for p in ("auto", "fp32"):
        print(f"{p:8s}{med['loop_fps'][p]:12.1f}{med['model_images_per_s'][p]:17.1f}")
    ratio = figures["auto_over_fp32"]
    print(f"{'ratio':8s}{ratio['loop_fps']:11.2f}x{ratio['model_images_per_s']:16.2f}x   (auto / fp32, medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Detection: FP32 vs INT8 mAP and CPU throughput side by side, and the loop's throughput vs `edgekit bench`.

    python benchmarks/bench_detect.py                         # sample data -> train -> export --int8, in a temp dir
    python benchmarks/bench_detect.py --work DIR --epochs 30  # keep (and reuse) the data, model and bundle
    python benchmarks/bench_detect.py --bundle BUNDLE --images LABELLED_DATASET

1. mAP@0.5:0.95 and mAP@0.5 (pycocotools, the bundle's eval score threshold) of every model on the
   labelled val split, through the same gate `edgekit validate` runs. Goal: INT8 mAP@0.5 drop <= 1 pt.
2. ONNX Runtime CPU throughput of FP32 and INT8 (detection runners, edgekit's NMS included), alternating
   in rounds; the ratio is of the medians.
3. The camera loop (benchmarks/bench_loop.py's synthetic camera, Detection postprocessing, a JSON sink)
   vs model-only throughput (`edgekit bench`'s measurement) on the FP32 model, side by side per round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build(work: Path, epochs: int, image_size: int) -> tuple[Path, Path]:
    """Sample detection data, a trained detector and its INT8 bundle under ``work`` (reused when present)."""
    from edgekit.host.export import export_bundle
    from edgekit.host.train_detect import train_detector
    from edgekit.quant.quantize import quantize_bundle
    from edgekit.sample_data import write_detection_sample_data

    data = work / "data"
    if not (data / "yolo").is_dir():
        write_detection_sample_data(data)
    model = work / "det.keras"
    if not model.is_file():
        train_detector(data / "yolo", model, image_size=image_size, epochs=epochs, seed=0)
    bundle = work / "bundle"
    if not (bundle / "edgekit.json").is_file():
        export_bundle(model, bundle)
        quantize_bundle(bundle, data / "yolo" / "images" / "train", holdout=0, progress=False)
    return bundle, data / "yolo"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", help="a detection bundle with an int8 model (default: built from sample data)")
    ap.add_argument("--images", help="labelled detection set for mAP (YOLO/COCO dataset, its val split)")
    ap.add_argument("--work", help="folder for the sample data, model and bundle (default: a temporary one)")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (same for every run)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--source-speed", type=float, default=2.0, help="synthetic camera rate as a multiple of the model's")
    args = ap.parse_args()

    from edgekit.bench import bench_bundle
    from edgekit.bundle import Bundle
    from edgekit.quant.gate import validate

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.bundle:
            bundle_path, images = Path(args.bundle), Path(args.images)
        else:
            bundle_path, images = build(work, args.epochs, args.image_size)
        bundle = Bundle.load(bundle_path)
        report = validate(bundle, images, out=work, tensorrt=False, check=False)
        print(report.summary())
        rows = {r.name: r for r in report.results}
        fp32, int8 = rows["fp32"], rows["int8"]
        print(f"\nmAP@0.5 on {report.images} labelled images: FP32 {fp32.accuracy:.2f}, INT8 {int8.accuracy:.2f} "
              f"(drop {fp32.accuracy - int8.accuracy:.2f} pts, goal <= 1); mAP@0.5:0.95 FP32 {fp32.map:.2f}, "
              f"INT8 {int8.map:.2f}")

        rates = {"fp32": [], "int8": []}
        model_fps, loop_fps, stages = [], [], []
        sys.path.insert(0, str(HERE))
        from bench_loop import run_loop_once

        for r in range(args.rounds):
            for precision in rates:
                m = bench_bundle(bundle, "onnxruntime", precision, warmup=10, duration=args.seconds,
                                 intra_op_threads=args.threads)
                rates[precision].append(m.inferences_per_s)
            m = bench_bundle(bundle, "onnxruntime", "fp32", warmup=10, duration=args.seconds,
                             intra_op_threads=args.threads)
            fps, lat, dropped = run_loop_once(bundle, "onnxruntime", "fp32", args.source_speed * m.inferences_per_s,
                                              args.seconds, work / "loop.jsonl", args.threads)
            stages.append({k: v["p50"] for k, v in lat.items() if isinstance(v, dict) and "p50" in v})
            model_fps.append(m.inferences_per_s)
            loop_fps.append(fps)
            print(f"round {r + 1}: fp32 {rates['fp32'][-1]:.1f}/s, int8 {rates['int8'][-1]:.1f}/s; "
                  f"bench {m.inferences_per_s:.1f}/s vs loop {fps:.1f}/s ({dropped} dropped)", flush=True)
        med = statistics.median
        print(f"\nCPU throughput (batch 1, {args.threads} thread(s), NMS included): FP32 {med(rates['fp32']):.1f}/s, "
              f"INT8 {med(rates['int8']):.1f}/s, INT8/FP32 {med(rates['int8']) / med(rates['fp32']):.2f}x")
        print(f"loop/bench throughput ratio (FP32): {med(lf / mf for lf, mf in zip(loop_fps, model_fps)):.3f} "
              f"(model {med(model_fps):.1f}/s, loop {med(loop_fps):.1f}/s)")
        print("loop stage latency p50 (ms): " + ", ".join(f"{k} {med(s[k] for s in stages):.2f}" for k in stages[0]))


if __name__ == "__main__":
    main()

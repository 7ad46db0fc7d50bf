"""Today's detector (``--arch small-v1``) against the pyramid detector (``--arch small``), same data and epochs.

    python benchmarks/bench_detector.py                          # both sets, 30 epochs, 160 px, a temp dir
    python benchmarks/bench_detector.py --work DIR --epochs 20   # keep (and reuse) data, models and bundles
    python benchmarks/bench_detector.py --sets sample --archs small-v1,small,medium

Sets: ``sample`` is `edgekit sample-data --task detect` (digits on real photos, 1-4 a scene, trained
with --no-flip); ``hard`` is generated here (320 train / 80 val): 2-12 shapes a scene (5 classes),
10-60 px on 320x240 real photo crops, overlapping up to IoU 0.3 with at least half of each shape left
in view, trained at its native 320 px. Every model is trained by ``train_detector`` with the same
epochs and seed, exported (`export`), quantized with a CPU variant (`quantize --cpu-variant`) and
scored by pycocotools' COCOeval on the val split at the bundle's eval threshold: mAP@0.5:0.95,
mAP@0.5, mAP@0.75, AP_small; precision and recall (IoU >= 0.5, same class, greedy one-to-one) after
NMS at the run's default score threshold 0.25, per class (the default) and with export's
``--class-agnostic``; mAP@0.5 of the INT8 models; ONNX Runtime batch-1
model latency (median over alternating rounds, no NMS).

Goals (issue #20): precision >= 0.9 at recall >= 0.9 at the default threshold; mAP@0.5:0.95 >= 5 points
above small-v1's; model latency <= 1.5x small-v1's at the same input size; INT8 mAP@0.5 drop <= 1 point.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross", "ring")


def hard_set(out: Path, seed: int = 1, counts=(("train", 320), ("val", 80))) -> Path:
    """A YOLO set of small, overlapping, varied shapes on real-photo crops (``out/yolo``)."""
    import cv2

    from edgekit.sample_data import sample_photos

    root = out / "yolo"
    if (root / "data.yaml").is_file():
        return root
    photos, rng = sample_photos(), np.random.default_rng(seed)
    (root).mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: images/val\nnc: {len(SHAPES)}\n"
                                    f"names: [{', '.join(SHAPES)}]\n")
    for split, count in counts:
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for k in range(count):
            photo = photos[rng.integers(len(photos))]
            y, x = rng.integers(0, photo.shape[0] - 240), rng.integers(0, photo.shape[1] - 320)
            scene = photo[y : y + 240, x : x + 320].copy()
            boxes = []
            for _ in range(rng.integers(2, 13)):
                side = int(np.exp(rng.uniform(np.log(10), np.log(60))))
                w = int(side * rng.uniform(0.7, 1.4))
                bx, by = int(rng.integers(0, 320 - w)), int(rng.integers(0, 240 - side))
                box = [bx, by, bx + w, by + side]
                # drawn on top: an earlier shape must stay at least half in view (else its label is invisible)
                if any(_iou(box, b[1]) > 0.3 or _covered(b[1], box) > 0.5 for b in boxes):
                    continue
                c = int(rng.integers(len(SHAPES)))
                _draw(scene, c, box, tuple(int(v) for v in rng.integers(0, 256, 3)))
                boxes.append((c, box))
            name = f"{split}_{k:04d}"
            cv2.imwrite(str(root / "images" / split / f"{name}.jpg"), scene, [cv2.IMWRITE_JPEG_QUALITY, 90])
            (root / "labels" / split / f"{name}.txt").write_text("".join(
                f"{c} {(b[0] + b[2]) / 640:.6f} {(b[1] + b[3]) / 480:.6f} {(b[2] - b[0]) / 320:.6f} "
                f"{(b[3] - b[1]) / 240:.6f}\n" for c, b in boxes))
    return root


def _draw(img, c, box, color):
    import cv2

    x1, y1, x2, y2 = box
    cx, cy, w, h = (x1 + x2) // 2, (y1 + y2) // 2, x2 - x1, y2 - y1
    t = max(2, min(w, h) // 5)
    if SHAPES[c] == "circle":
        cv2.ellipse(img, (cx, cy), (w // 2, h // 2), 0, 0, 360, color, -1)
    elif SHAPES[c] == "square":
        cv2.rectangle(img, (x1, y1), (x2 - 1, y2 - 1), color, -1)
    elif SHAPES[c] == "triangle":
        cv2.fillPoly(img, [np.array([[cx, y1], [x1, y2 - 1], [x2 - 1, y2 - 1]], np.int32)], color)
    elif SHAPES[c] == "cross":
        cv2.rectangle(img, (cx - t // 2, y1), (cx + t // 2, y2 - 1), color, -1)
        cv2.rectangle(img, (x1, cy - t // 2), (x2 - 1, cy + t // 2), color, -1)
    else:
        cv2.ellipse(img, (cx, cy), (w // 2 - t // 2, h // 2 - t // 2), 0, 0, 360, color, t)


def _area(a) -> float:
    return (a[2] - a[0]) * (a[3] - a[1])


def _intersection(a, b) -> float:
    return max(min(a[2], b[2]) - max(a[0], b[0]), 0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0)


def _iou(a, b) -> float:
    inter = _intersection(a, b)
    return inter / (_area(a) + _area(b) - inter)


def _covered(a, b) -> float:
    """The fraction of box ``a`` that box ``b`` covers."""
    return _intersection(a, b) / _area(a)


def precision_recall(truth, dets, size, iou: float = 0.5) -> tuple[float, float, int]:
    """Precision, recall (greedy one-to-one matches by score, same class, IoU >= ``iou``) and the number of
    images whose detections filled the cap."""
    from edgekit.host.train_detect import box_iou

    h, w = size
    tp = n_det = n_gt = capped = 0
    cap = dets["detection_scores"].shape[1]
    for i, rows in enumerate(truth):
        rows = np.asarray(rows, np.float64).reshape(-1, 5)
        n = int(dets["num_detections"][i, 0])
        capped += n == cap
        n_det, n_gt = n_det + n, n_gt + len(rows)
        if not n or not len(rows):
            continue
        ious = box_iou(dets["detection_boxes"][i, :n] * [w, h, w, h], rows[:, 1:])
        ious[dets["detection_classes"][i, :n, None] != rows[None, :, 0]] = 0
        used = np.zeros(len(rows), bool)
        for d in np.argsort(-dets["detection_scores"][i, :n]):
            j = np.argmax(np.where(used, 0, ious[d]))
            if ious[d, j] >= iou and not used[j]:
                used[j], tp = True, tp + 1
    return tp / max(n_det, 1), tp / max(n_gt, 1), capped


def build(work: Path, data: Path, arch: str, epochs: int, image_size: int, flip: bool, seed: int = 0):
    """Train ``arch`` on ``data`` and export + quantize it (reused when present); the bundle path and seconds."""
    from edgekit.host.export import export_bundle
    from edgekit.host.train_detect import train_detector
    from edgekit.quant.quantize import quantize_bundle

    model, bundle = work / f"{arch}.keras", work / f"{arch}.bundle"
    start = time.monotonic()
    if not model.is_file():
        train_detector(data, model, arch=arch, image_size=image_size, epochs=epochs, seed=seed, flip=flip, verbose=0)
    train_s = time.monotonic() - start
    if not (bundle / "edgekit.json").is_file():
        export_bundle(model, bundle)
        quantize_bundle(bundle, data / "images" / "train", holdout=0, cpu_variant=True, progress=False)
    return bundle, train_s


def score(bundle_path: Path, data: Path) -> dict:
    """Accuracy figures of a bundle's FP32 model and mAP@0.5 of its INT8 models on ``data``'s val split."""
    from edgekit.bundle import Bundle
    from edgekit.nms import NmsParams, efficient_nms
    from edgekit.quant.detection_gate import coco_stats, evaluate, fp32_reference, labelled_tensors

    bundle = Bundle.load(bundle_path)
    x, truth = labelled_tensors(bundle, data)
    (boxes, scores), _ = fp32_reference(bundle, x)
    params, size, nc = NmsParams.from_dict(bundle.manifest.get("nms") or {}), tuple(bundle.preprocess.size), len(bundle.labels)
    nms = lambda t, agnostic=params.class_agnostic: efficient_nms(  # noqa: E731
        boxes, scores, score_threshold=t, iou_threshold=params.iou_threshold,
        max_output_boxes=params.max_detections, class_agnostic=agnostic)
    stats = coco_stats(truth, nms(params.eval_score_threshold), nc, size)
    p, r, capped = precision_recall(truth, nms(params.score_threshold), size)
    p_agnostic, r_agnostic, _ = precision_recall(truth, nms(params.score_threshold, True), size)
    report = evaluate(bundle, x, truth, tensorrt=False, reference=((boxes, scores), 0.0))
    int8 = {res.name: res.accuracy for res in report.results if res.name != "fp32"}
    return {"map": stats[0], "map50": stats[1], "map75": stats[2], "ap_small": stats[3], "ar100": stats[8],
            "precision": p, "recall": r, "precision_agnostic": p_agnostic, "recall_agnostic": r_agnostic,
            "capped": capped, "images": len(x), "threshold": params.score_threshold,
            "int8_map50": int8, "params": bundle.manifest.get("training", {})}


def latency(bundles: dict, rounds: int, runs: int, threads: int) -> dict:
    """Median batch-1 ONNX Runtime latency (ms, model only) of each bundle's FP32 model, alternating in rounds."""
    from edgekit.backends.onnxruntime import OnnxRuntimeRunner
    from edgekit.bench import sample_batch
    from edgekit.bundle import Bundle

    runners, x = {}, None
    for name, path in bundles.items():
        bundle = Bundle.load(path)
        x = sample_batch(bundle, 1)
        runners[name] = OnnxRuntimeRunner(bundle.model_path("fp32"), intra_op_threads=threads)
        runners[name].__enter__()
    times = {name: [] for name in bundles}
    try:
        for _ in range(rounds):
            for name, runner in runners.items():
                for _ in range(5):
                    runner.infer(x)
                lat = []
                for _ in range(runs):
                    t0 = time.perf_counter()
                    runner.infer(x)
                    lat.append((time.perf_counter() - t0) * 1e3)
                times[name].append(statistics.median(lat))
    finally:
        for runner in runners.values():
            runner.__exit__(None, None, None)
    return {name: statistics.median(v) for name, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", help="folder for data, models and bundles (default: a temporary one)")
    ap.add_argument("--sets", default="sample,hard")
    ap.add_argument("--archs", default="small-v1,small", help="the first is the baseline")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0, help="training seed (the hard set's content is fixed)")
    ap.add_argument("--image-size", type=int, default=160, help="input side for the sample set (train's default)")
    ap.add_argument("--hard-image-size", type=int, default=320,
                    help="input side for the hard set (its native width: small objects)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (0: its default)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()

    from edgekit.sample_data import write_detection_sample_data

    archs = args.archs.split(",")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_detector_"))
    rows = []
    for name in args.sets.split(","):
        folder = work / name
        if name == "sample":
            if not (folder / "data" / "yolo").is_dir():
                write_detection_sample_data(folder / "data")
            data, size, flip = folder / "data" / "yolo", args.image_size, False
        else:
            data, size, flip = hard_set(folder / "data"), args.hard_image_size, True
        bundles, figures = {}, {}
        for arch in archs:
            out = folder / (f"{size}px-{args.epochs}ep" + (f"-seed{args.seed}" if args.seed else ""))
            out.mkdir(parents=True, exist_ok=True)
            bundles[arch], train_s = build(out, data, arch, args.epochs, size, flip, args.seed)
            figures[arch] = score(bundles[arch], data)
            figures[arch]["train_s"] = train_s
        ms = latency(bundles, args.rounds, args.runs, args.threads)
        for arch in archs:
            rows.append((name, size, arch, figures[arch], ms[arch], ms[archs[0]]))
    print(f"\nsame data, {args.epochs} epochs, seed {args.seed}; COCOeval on the val split; P/R after NMS at "
          f"score 0.25; ONNX Runtime batch-1 model latency, {args.threads or 'default'} thread(s), "
          f"median of {args.rounds} rounds")
    head = (f"{'set':<7}{'px':>4} {'arch':<9}{'mAP':>6}{'AP50':>6}{'AP75':>6}{'APs':>6}{'AR100':>6}{'P@.25':>7}"
            f"{'R@.25':>7}{'agnostic P/R':>14}{'capped':>7}{'int8 AP50 drop (qdq/cpu)':>26}{'ms':>7}{'x base':>7}")
    print(head)
    for name, size, arch, f, ms, base_ms in rows:
        drops = "/".join(f"{f['map50'] - f['int8_map50'][k]:+.2f}" if k in f["int8_map50"] else "-"
                         for k in ("int8", "int8_cpu"))
        print(f"{name:<7}{size:>4} {arch:<9}{f['map']:6.1f}{f['map50']:6.1f}{f['map75']:6.1f}{f['ap_small']:6.1f}"
              f"{f['ar100']:6.1f}{f['precision']:7.3f}{f['recall']:7.3f}"
              f"{f['precision_agnostic']:8.3f}/{f['recall_agnostic']:.3f}{f['capped']:>4}/{f['images']:<3}"
              f"{drops:>25}{ms:7.2f}{ms / base_ms:7.2f}")
    print("\ngoals: P >= 0.9 at R >= 0.9 at 0.25; mAP >= base + 5; latency <= 1.5x base; INT8 AP50 drop <= 1")
    (work / "bench_detector.json").write_text(json.dumps(
        [{"set": n, "px": s, "arch": a, **{k: v for k, v in f.items() if k != "params"}, "latency_ms": ms}
         for n, s, a, f, ms, _ in rows], indent=1))
    print(f"figures in {work / 'bench_detector.json'}")


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Object detection end to end on the CPU, on data the install brings (handwritten digits pasted on
# scikit-learn's two real photos, with their boxes):
# sample data -> train a detector -> export + INT8 (EfficientNMS_TRT appended for TensorRT) -> validate (mAP)
# -> inference loop on a video with boxes drawn -> bench.
# Usage: bash examples/quickstart_detect.sh [WORKDIR]   (EPOCHS=N to train longer or shorter)
set -euo pipefail
work=${1:-edgekit-quickstart-detect}
epochs=${EPOCHS:-20}
mkdir -p "$work"
cd "$work"
step() { printf '\n==> %s\n' "$*"; }

step "edgekit sample-data --task detect data"
edgekit sample-data --task detect data --force

# --no-flip: a mirrored digit is not that digit (leave flips on for most objects)
step "edgekit train data/yolo --task detect -o digits-det.keras --image-size 128 --epochs $epochs --no-flip"
edgekit train data/yolo --task detect -o digits-det.keras --image-size 128 --epochs "$epochs" --no-flip --force
# the same scenes in COCO layout train the same way: edgekit train data/coco --task detect ...

step "edgekit export digits-det.keras -o digits-det.bundle --target jetpack-6.1 --int8 --calib-images data/yolo/images/train"
edgekit export digits-det.keras -o digits-det.bundle --target jetpack-6.1 --int8 \
    --calib-images data/yolo/images/train --force

step "edgekit inspect digits-det.bundle"
edgekit inspect digits-det.bundle

step "edgekit validate digits-det.bundle --images data/yolo"
edgekit validate digits-det.bundle --images data/yolo

# the bundle's run threshold (0.25) applies: the detector's score estimates how well its box fits
# (raise it with --score-threshold for fewer, surer detections)
step "edgekit run digits-det.bundle --source data/val.mp4 --precision int8 --json detections.jsonl --record detections.mp4"
edgekit run digits-det.bundle --source data/val.mp4 --precision int8 --json detections.jsonl --record detections.mp4

step "video detections against data/val.boxes.json (recall and precision at IoU 0.5, same label)"
python3 - <<'PY'
import json

def iou(a, b):
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

truth = json.load(open("data/val.boxes.json"))
lines = [json.loads(line) for line in open("detections.jsonl")]
frames = [p["results"] for p in lines]
pairs = [(p["results"], truth[p["frame"]]) for p in lines]  # "frame": its number in val.mp4
found = sum(any(d["label"] == t["label"] and iou(d["box"], t["box"]) >= 0.5 for d in dets)
            for dets, objs in pairs for t in objs)
right = sum(any(d["label"] == t["label"] and iou(d["box"], t["box"]) >= 0.5 for t in objs)
            for dets, objs in pairs for d in dets)
n_truth, n_dets = sum(map(len, truth)), sum(map(len, frames))
print(f"{len(frames)} frames: {found}/{n_truth} objects found ({100 * found / n_truth:.1f}% recall), "
      f"{right}/{n_dets} detections right ({100 * right / max(n_dets, 1):.1f}% precision); boxes drawn in detections.mp4")
PY

step "edgekit bench digits-det.bundle --precision int8"
edgekit bench digits-det.bundle --precision int8 --duration 3

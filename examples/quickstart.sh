#!/usr/bin/env bash
# The whole edgekit path on the CPU, on data the install brings (scikit-learn's handwritten digits):
# sample data -> train -> export + INT8 -> validate -> inference loop on a video -> bench.
# Usage: bash examples/quickstart.sh [WORKDIR]   (EPOCHS=N to train longer or shorter)
set -euo pipefail
work=${1:-edgekit-quickstart}
epochs=${EPOCHS:-8}
mkdir -p "$work"
cd "$work"
step() { printf '\n==> %s\n' "$*"; }

step "edgekit sample-data data"
edgekit sample-data data --force

step "edgekit train data/train -o digits.keras --epochs $epochs"
edgekit train data/train -o digits.keras --epochs "$epochs" --force

step "edgekit export digits.keras -o digits.bundle --target jetpack-6.1 --int8 --calib-images data/train --cpu-variant"
edgekit export digits.keras -o digits.bundle --target jetpack-6.1 --int8 --calib-images data/train --cpu-variant --force

step "edgekit inspect digits.bundle"
edgekit inspect digits.bundle

step "edgekit validate digits.bundle --images data/val"
edgekit validate digits.bundle --images data/val

# no --precision: auto picks the fastest model that passed its gate (on the CPU: the int8_cpu variant)
step "edgekit run digits.bundle data/val.mp4 --json predictions.jsonl"
edgekit run digits.bundle data/val.mp4 --json predictions.jsonl

step "video accuracy against data/val.labels.txt"
python3 - <<'PY'
import json
truth = open("data/val.labels.txt").read().split()
preds = [json.loads(line) for line in open("predictions.jsonl")]
hits = sum(p["results"][0]["label"] == truth[p["frame"]] for p in preds)  # "frame": its number in val.mp4
print(f"{hits}/{len(truth)} video frames classified correctly ({100 * hits / len(truth):.1f}%)")
PY

step "edgekit bench digits.bundle (auto) and --precision fp32"
edgekit bench digits.bundle --duration 3
edgekit bench digits.bundle --precision fp32 --duration 3

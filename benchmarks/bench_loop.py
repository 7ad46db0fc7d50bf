"""Camera-loop overhead: loop throughput vs model-only throughput, end-to-end p99 vs model latency.

A synthetic camera faster than the model (640x480 frames ready in memory, delivered at
``--source-speed`` x the model's own rate on the capture thread, newest frame wins) feeds the full
loop (capture thread, preprocess, infer, postprocess, a JSON sink). A camera's frames arrive by
DMA, so the source costs little CPU; decoding a video file instead would measure FFmpeg, not the loop.
Model-only figures come from ``edgekit.bench`` (what ``edgekit bench`` prints) on the same bundle,
backend, precision and thread count, measured side by side, alternating, in rounds.

    python benchmarks/bench_loop.py           # a small CNN (colour labels) at 224x224, 1 ORT thread
    python benchmarks/bench_loop.py --bundle BUNDLE --backend tensorrt --precision fp16

Goals: throughput ratio >= 0.95, end-to-end p99 <= 2x the model's latency.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from edgekit.backends.select import open_runner
from edgekit.bench import bench_bundle
from edgekit.bundle import Bundle
from edgekit.stream import postprocess
from edgekit.stream.pipeline import Pipeline
from edgekit.stream.sinks import JsonSink
from edgekit.stream.capture import Capture
from edgekit.stream.source_base import Source
from edgekit.tiny import write_tiny_bundle


class SyntheticCamera(Source):
    """A live source giving noisy solid-colour 640x480 frames at ``fps`` (a camera faster than the model)."""

    def __init__(self, fps: float, size=(480, 640), count: int = 30):
        super().__init__(f"synthetic camera at {fps:.0f} fps")
        rng = np.random.default_rng(0)
        self.frames = []
        for i in range(count):
            frame = np.zeros((*size, 3), np.uint8)
            frame[..., 2 - i % 3] = 200
            self.frames.append(cv2.add(frame, rng.integers(0, 40, frame.shape, dtype=np.uint8)))
        self.fps, self.n, self.due = fps, 0, 0.0

    def open(self) -> None:
        self.due = time.monotonic()

    def read(self) -> np.ndarray:
        self.due += 1.0 / self.fps
        time.sleep(max(0.0, self.due - time.monotonic()))
        self.n += 1
        return self.frames[self.n % len(self.frames)]


def heavy_bundle(path: Path, size: int, width: int = 64, depth: int = 6) -> Bundle:
    """The tiny bundle's manifest with a small CNN inside (conv stem, ``depth`` 3x3 convs, GAP, FC)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes, x, c = [], [], "input", 3
    for i in range(depth + 1):
        w = (rng.standard_normal((width, c, 3, 3)) * np.sqrt(2 / (9 * c))).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(width, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1], strides=[2, 2] if i < 2 else [1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x, c = f"r{i}", width
    inits += [numpy_helper.from_array(rng.standard_normal((3, width)).astype(np.float32), "fc_w"),
              numpy_helper.from_array(np.zeros(3, np.float32), "fc_b")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pool"]), helper.make_node("Flatten", ["pool"], ["flat"]),
              helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
              helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    graph = helper.make_graph(nodes, "bench_cnn",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    bundle = write_tiny_bundle(path, size=size)
    onnx.save(model, path / "cnn.onnx")
    bundle.add_model("fp32", path / "cnn.onnx", "cnn.onnx")
    bundle.save()
    return Bundle.load(path)


def run_loop_once(bundle, backend, precision, fps, seconds, json_path, threads):
    runner = open_runner(bundle, backend, precision, intra_op_threads=threads)
    capture = Capture(SyntheticCamera(fps))
    pipe = Pipeline(bundle, capture, runner, postprocess.for_bundle(bundle), [JsonSink(str(json_path))],
                    duration=seconds, log_every=1e9)
    summary = pipe.run()
    return summary["frames"] / summary["elapsed_s"], summary["latency_ms"], summary["drops"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", help="bundle folder (default: the tiny colour model at --size)")
    ap.add_argument("--size", type=int, default=224, help="input side of the default CNN")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--threads", type=int, default=1,
                    help="ONNX Runtime intra-op threads, same for both (default 1: the model gets one core, the "
                         "loop's other stages the rest, as on a Jetson where the GPU infers; 0 lets ORT choose)")
    ap.add_argument("--seconds", type=float, default=4.0, help="length of each measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--source-speed", type=float, default=2.0, help="source rate as a multiple of the model's")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = Bundle.load(args.bundle) if args.bundle else heavy_bundle(tmp / "cnn", args.size)
        model_fps, model_p50, model_p99, loop_fps, e2e_p99, e2e_p50, prep_p50, drops = ([] for _ in range(8))
        for r in range(args.rounds):
            m = bench_bundle(bundle, args.backend, args.precision, warmup=20, duration=args.seconds,
                             intra_op_threads=args.threads)
            lat = m.latency()
            model_fps.append(m.inferences_per_s)
            model_p50.append(lat["p50"])
            model_p99.append(lat["p99"])
            fps, loop_lat, dropped = run_loop_once(bundle, args.backend, args.precision,
                                                   args.source_speed * m.inferences_per_s, args.seconds,
                                                   tmp / "out.jsonl", args.threads)
            loop_fps.append(fps)
            e2e_p99.append(loop_lat["end_to_end"]["p99"])
            e2e_p50.append(loop_lat["end_to_end"]["p50"])
            prep_p50.append(loop_lat["preprocess"]["p50"])
            drops.append(dropped)
            print(f"round {r + 1}: model {m.inferences_per_s:.1f}/s (p50 {lat['p50']:.2f} ms), loop {fps:.1f}/s, "
                  f"e2e p99 {loop_lat['end_to_end']['p99']:.2f} ms, {dropped} dropped", flush=True)

    med = statistics.median
    print(f"\nbundle: {args.bundle or f'small CNN, {args.size}x{args.size} input'}; backend {args.backend}, "
          f"{args.threads or 'default'} intra-op thread(s); "
          f"source 640x480 at {args.source_speed:g}x the model rate; medians of {args.rounds} rounds")
    print(f"model only:  {med(model_fps):.1f} inferences/s, latency p50 {med(model_p50):.2f} ms, p99 {med(model_p99):.2f} ms")
    print(f"loop:        {med(loop_fps):.1f} frames/s, end-to-end p50 {med(e2e_p50):.2f} ms, p99 {med(e2e_p99):.2f} ms "
          f"(preprocess p50 {med(prep_p50):.2f} ms), {int(med(drops))} dropped per run")
    # ratios within each round (side by side), then their median
    ratio = med(lf / mf for lf, mf in zip(loop_fps, model_fps))
    print(f"throughput ratio loop/model: {ratio:.3f}  (goal >= 0.95)")
    print(f"end-to-end p99 / model p50:  {med(e / m for e, m in zip(e2e_p99, model_p50)):.2f}x  (goal <= 2)")
    print(f"end-to-end p50 / model p50:  {med(e / m for e, m in zip(e2e_p50, model_p50)):.2f}x")
    print(f"end-to-end p99 / model p99:  {med(e / m for e, m in zip(e2e_p99, model_p99)):.2f}x")


if __name__ == "__main__":
    main()

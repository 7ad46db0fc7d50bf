from __future__ import annotations

import click

from edgekit.cli.options import positive, threads_option


@click.command("bench")
@click.argument("bundle", type=click.Path())
@click.option("--backend", type=click.Choice(["auto", "tensorrt", "onnxruntime"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "int8", "int8_cpu"]), default="auto",
              show_default=True,
              help="auto: the fastest, measured here, of the models that passed their accuracy gate (TensorRT: int8, "
                   "fp16, fp32; ONNX Runtime on the CPU: int8_cpu, fp32). int8 on the CPU prefers int8_cpu; "
                   "int8_cpu is ONNX Runtime only.")
@click.option("--allow-failed-gate", is_flag=True, help="Use a model that failed its accuracy gate (with a warning).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Images per inference.")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True, help="Untimed inferences first.")
@click.option("--iterations", type=click.IntRange(min=1), help="Timed inferences (default 100).")
@click.option("--duration", type=positive(), help="Run timed inferences for this many seconds instead.")
@threads_option()
@threads_option("ONNX Runtime inter-op threads.", "--inter-threads")
@click.option("--cache-dir", type=click.Path(), help="TensorRT engine cache (default ~/.cache/edgekit).")
@click.option("--images", type=click.Path(),
              help="Detection bundles: time on these frames (a folder of images; default: natural-image-like "
                   "synthetic frames).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def command(bundle, backend, precision, allow_failed_gate, batch, warmup, iterations, duration, threads, inter_threads, cache_dir, images, as_json):
    """Measure BUNDLE's throughput (inferences/s, images/s) and latency (min/p50/p90/p99/max).

    Like trtexec, for any backend; a TensorRT engine is built on first use and cached. A detector is
    timed on realistic frames (--images, else natural-image-like ones), model and NMS apart where NMS
    runs outside the model, with its detections per image.
    """
    import json

    from edgekit.bench import bench_bundle
    from edgekit.bundle import Bundle

    result = bench_bundle(
        Bundle.load(bundle),
        backend,
        precision,
        batch,
        warmup,
        iterations,
        duration,
        images=images,
        intra_op_threads=threads,
        inter_op_threads=inter_threads,
        cache_dir=cache_dir,
        allow_failed_gate=allow_failed_gate,
    )
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.summary())

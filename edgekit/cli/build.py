from __future__ import annotations

import click


@click.command("build")
@click.argument("bundle", type=click.Path())
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "int8"]), default="auto", show_default=True,
              help="auto: the first of int8, fp16, fp32 this GPU runs fast whose model passed its accuracy gate "
                   "(`edgekit run` and `bench` measure among them).")
@click.option("--allow-failed-gate", is_flag=True, help="Use a model that failed its accuracy gate (with a warning).")
@click.option("--batch", default="1", show_default=True,
              help="Batch profile: N (= 1,N,N; with --dla N,N,N) or MIN,OPT,MAX.")
@click.option("--workspace", type=int, help="Builder workspace limit in MiB (lower it when a small Jetson runs out of memory).")
@click.option("--dla", type=int, help="Build for DLA core N, with GPU fallback (needs fp16 or int8, and a static --batch).")
@click.option("--calibrate", type=click.Path(), help="INT8 without a Q/DQ model: calibrate on these images (TensorRT <= 10).")
@click.option("--cache-dir", type=click.Path(), help="Engine cache folder (default ~/.cache/edgekit; the service uses /var/cache/edgekit).")
@click.option("--force", is_flag=True, help="Rebuild even when a cached engine fits.")
@click.option("--score-threshold", type=click.FloatRange(0, 1), default=None,
              help="Detectors: the `run --score-threshold` this engine serves (its NMS runs there, at least 0.01) "
                   "[default: the bundle's run threshold].")
def command(bundle, precision, allow_failed_gate, batch, workspace, dla, calibrate, cache_dir, force, score_threshold):
    """Build BUNDLE's TensorRT engine, or find it in the engine cache; print the plan's path.

    The plan is a plain serialized engine (trtexec and DeepStream read it); its metadata sits beside
    it in PLAN.json. A detector's engine is the one `edgekit run` uses (its NMS at the run threshold).
    """
    from pathlib import Path

    from edgekit.backends.select import choose_tensorrt_model, log_choice
    from edgekit.backends.tensorrt.builder import build
    from edgekit.backends.tensorrt.recipe import BuildOptions, parse_batch
    from edgekit.bundle import Bundle

    loaded = Bundle.load(bundle)
    parse_batch(batch, static=dla is not None)  # a bad --batch is refused before anything else
    # the builder builds what it is given: the choice (auto resolved, failed gates refused) is made here,
    # before looking for TensorRT, so a failed gate is refused even where TensorRT is missing
    choice = choose_tensorrt_model(loaded, precision, allow_failed_gate, dla, 0)
    log_choice(choice)
    nms_threshold = None
    if loaded.task == "detection":  # the engine `run` opens: NMS at the run threshold (see open_runner)
        from edgekit.nms import NmsParams, engine_score_threshold

        params = NmsParams.from_dict(loaded.manifest.get("nms") or {})
        asked = params.score_threshold if score_threshold is None else score_threshold
        nms_threshold = engine_score_threshold(asked, params.eval_score_threshold)
    options = BuildOptions(
        precision=choice.precision,
        batch=batch,
        workspace_mib=workspace,
        dla_core=dla,
        calibrate=Path(calibrate) if calibrate else None,
        cache_dir=Path(cache_dir) if cache_dir else None,
        force=force,
        nms_score_threshold=nms_threshold,
    )
    plan, built = build(loaded, options)
    click.echo(f"{'built' if built else 'cached'}: {plan}")

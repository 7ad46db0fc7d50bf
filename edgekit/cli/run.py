from __future__ import annotations

import click

SOURCE_HELP = "0 or /dev/videoN, csi://N, rtsp://..., http(s)://... (MJPEG), gst:PIPELINE, a video file, an image folder."


@click.command("run")
@click.argument("bundle", type=click.Path())
@click.argument("source_arg", metavar="[SOURCE]", required=False)
@click.option("--camera", type=int, metavar="N", help="V4L2 camera N (same as SOURCE N).")
@click.option("--source", metavar="URI", help="The SOURCE, as an option: " + SOURCE_HELP)
@click.option("--width", type=int, help="Camera frame width (V4L2/CSI).")
@click.option("--height", type=int, help="Camera frame height (V4L2/CSI).")
@click.option("--fps", type=float, help="Camera frame rate; with --realtime, the pace a file is played at.")
@click.option("--backend", type=click.Choice(["auto", "tensorrt", "onnxruntime"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "int8", "int8_cpu"]), default="auto",
              show_default=True,
              help="auto: the fastest, measured here, of the models that passed their accuracy gate (TensorRT: int8, "
                   "fp16, fp32; ONNX Runtime on the CPU: int8_cpu, fp32). int8 on the CPU prefers int8_cpu; "
                   "int8_cpu is ONNX Runtime only.")
@click.option("--allow-failed-gate", is_flag=True, help="Use a model that failed its accuracy gate (with a warning).")
@click.option("--json", "json_path", metavar="PATH|-", help="Write one JSON line per frame (- for stdout).")
@click.option("--record", type=click.Path(dir_okay=False), help="Record the annotated frames (.mp4, .avi, .mkv, .mov).")
@click.option("--display", is_flag=True, help="Show the annotated frames in a window.")
@click.option("--serve", metavar="[HOST:]PORT", help="Serve an MJPEG stream, status page and /metrics (host 127.0.0.1 unless given).")
@click.option("--max-frames", type=click.IntRange(min=1), help="Stop after this many frames.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), help="Stop after this many seconds.")
@click.option("--realtime", is_flag=True, help="Play a file at its frame rate, dropping frames the model cannot keep up with.")
@click.option("--loop", is_flag=True, help="Replay a file or image folder forever.")
@click.option("--top-k", type=click.IntRange(min=1), default=1, show_default=True, help="Classes reported per frame.")
@click.option("--log-every", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              metavar="SECONDS", help="Log FPS and latency this often.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              metavar="SECONDS", help="Opening/reading timeout of network sources.")
@click.option("--score-threshold", type=click.FloatRange(0, 1), default=None,
              help="Detection bundles: keep detections scoring at least this [default: the bundle's nms.score_threshold].")
@click.option("--threads", type=int, help="ONNX Runtime intra-op threads (default: its choice).")
@click.option("--cache-dir", type=click.Path(), help="TensorRT engine cache (default ~/.cache/edgekit).")
def command(bundle, source_arg, camera, source, width, height, fps, backend, precision, allow_failed_gate, json_path,
            record, display, serve,
            max_frames, duration, realtime, loop, top_k, log_every, timeout, score_threshold, threads,
            cache_dir):
    """Run BUNDLE on frames from SOURCE (or --camera/--source): a camera, stream, video file or image folder.

    \b
    SOURCE: 0 or /dev/videoN, csi://N, rtsp://..., http(s)://... (MJPEG), gst:PIPELINE,
    a video file, an image folder.
    Results go to any mix of --json, --record, --display and --serve; with none of them, one line
    per result is printed (a burst, then at most 2 a second). Live sources that drop out
    are reopened with backoff (the first open must succeed); files end the run. SIGINT/SIGTERM
    finish the current frame, close every output and exit 0. Under systemd it sends READY=1 after
    the first frame, WATCHDOG=1 while every stage is making progress, and STATUS= with the FPS.
    """
    from edgekit.cli import is_quiet, say
    from edgekit.stream.loop import run_loop

    summary = run_loop(
        bundle,
        the_source(source_arg, camera, source),
        width=width, height=height, fps=fps, backend=backend, precision=precision,
        allow_failed_gate=allow_failed_gate, json_path=json_path, record=record, display=display, serve=serve,
        console=not (json_path or record or display or serve or is_quiet()), max_frames=max_frames, duration=duration,
        realtime=realtime,
        loop=loop, top_k=top_k, log_every=log_every, timeout=timeout, intra_op_threads=threads, cache_dir=cache_dir,
        score_threshold=score_threshold,
    )
    say(summary["text"], err=True)


def the_source(source_arg, camera, source):
    """The one source given (SOURCE, --camera or --source); UsageError for none or several."""
    from edgekit.errors import UsageError

    given = [s for s in (source_arg, camera, source) if s is not None]
    if len(given) != 1:
        raise UsageError("give one of SOURCE (e.g. 0 or video.mp4), --camera N or --source URI"
                         + (f"; got {len(given)}" if given else ""))
    return given[0]


def check_run_options(args) -> dict:
    """Parse ``edgekit run BUNDLE ARGS``'s options with run's own parser, without running anything
    (``service install`` checks its RUN_OPTIONS so); UsageError naming what run would refuse."""
    from edgekit.errors import UsageError

    try:
        ctx = command.make_context("run", ["BUNDLE", *args], resilient_parsing=False)
    except click.ClickException as exc:
        raise UsageError(f"run options: {exc.format_message()}") from exc
    the_source(ctx.params["source_arg"], ctx.params["camera"], ctx.params["source"])
    return ctx.params

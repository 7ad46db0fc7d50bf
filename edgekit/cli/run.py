import click

SOURCE_HELP = "0 or /dev/videoN, csi://N, rtsp://..., http(s)://... (MJPEG), gst:PIPELINE, a video file, an image folder."


@click.command("run")
@click.argument("bundle", type=click.Path())
@click.option("--camera", type=int, metavar="N", help="V4L2 camera N (same as --source N).")
@click.option("--source", metavar="URI", help=SOURCE_HELP)
@click.option("--width", type=int, help="Camera frame width (V4L2/CSI).")
@click.option("--height", type=int, help="Camera frame height (V4L2/CSI).")
@click.option("--fps", type=float, help="Camera frame rate; with --realtime, the pace a file is played at.")
@click.option("--backend", type=click.Choice(["auto", "tensorrt", "onnxruntime"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True)
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
def command(bundle, camera, source, width, height, fps, backend, precision, json_path, record, display, serve,
            max_frames, duration, realtime, loop, top_k, log_every, timeout, score_threshold, threads, cache_dir):
    """Run BUNDLE on frames from a camera, stream, video file or image folder.

    \b
    Results go to any mix of --json, --record, --display and --serve. Live sources that drop out
    are reopened with backoff (the first open must succeed); files end the run. SIGINT/SIGTERM
    finish the current frame, close every output and exit 0. Under systemd it sends READY=1 after
    the first frame, WATCHDOG=1 while every stage is making progress, and STATUS= with the FPS.
    """
    from edgekit.errors import UsageError
    from edgekit.stream.loop import run_loop

    if (camera is None) == (source is None):
        raise UsageError("give one of --camera N or --source URI")
    if not (json_path or record or display or serve):
        click.echo("edgekit: no --json, --record, --display or --serve given: results are only counted", err=True)
    summary = run_loop(
        bundle,
        camera if camera is not None else source,
        width=width, height=height, fps=fps, backend=backend, precision=precision, json_path=json_path,
        record=record, display=display, serve=serve, max_frames=max_frames, duration=duration, realtime=realtime,
        loop=loop, top_k=top_k, log_every=log_every, timeout=timeout, intra_op_threads=threads, cache_dir=cache_dir,
        score_threshold=score_threshold,
    )
    click.echo(summary["text"], err=True)

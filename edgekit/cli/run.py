from __future__ import annotations

import click

from edgekit.cli.options import Number, positive, threads_option
from edgekit.cli.analytics_options import analytics_from_options, analytics_options

SOURCE_HELP = "0 or /dev/videoN, csi://N, rtsp://..., http(s)://... (MJPEG), gst:PIPELINE, a video file, an image folder."


@click.command("run")
@click.argument("bundle", type=click.Path())
@click.argument("source_args", metavar="[SOURCE]...", nargs=-1)
@click.option("--camera", type=int, metavar="N", help="V4L2 camera N (same as SOURCE N).")
@click.option("--source", "source_opts", metavar="[NAME=]URI", multiple=True,
              help="A SOURCE, as an option (repeatable): " + SOURCE_HELP)
@click.option("--sources-file", type=click.Path(dir_okay=False), metavar="PATH",
              help="More sources, listed in a JSON or YAML file with per-source options (uri, name, realtime, loop, "
                   "fps, width, height).")
@click.option("--batch-timeout", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Several sources: how long a batch waits for a live source's frame "
                   "[default: one frame period of the fastest live source; 0.001 for files].")
@click.option("--allow-missing", is_flag=True,
              help="Several sources: run without a source that does not open at the start (a live one keeps trying).")
@click.option("--width", type=int, help="Camera frame width (V4L2/CSI).")
@click.option("--height", type=int, help="Camera frame height (V4L2/CSI).")
@click.option("--fps", type=positive(), help="Camera frame rate; with --realtime, the pace a file is played at.")
@click.option("--backend", type=click.Choice(["auto", "tensorrt", "onnxruntime"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "int8", "int8_cpu"]), default="auto",
              show_default=True,
              help="auto: the fastest, measured here, of the models that passed their accuracy gate (TensorRT: int8, "
                   "fp16, fp32; ONNX Runtime on the CPU: int8_cpu, fp32). int8 on the CPU prefers int8_cpu; "
                   "int8_cpu is ONNX Runtime only.")
@click.option("--allow-failed-gate", is_flag=True, help="Use a model that failed its accuracy gate (with a warning).")
@click.option("--json", "json_path", metavar="PATH|-", help="Write one JSON line per frame (- for stdout).")
@click.option("--record", metavar="PATH",
              help="Record the annotated frames (.mp4, .avi, .mkv, .mov); several sources: a template "
                   "(out/{source}.mkv) or a folder (NAME.mkv in it).")
@click.option("--display", is_flag=True, help="Show the annotated frames in a window.")
@click.option("--serve", metavar="[HOST:]PORT", callback=lambda ctx, param, value: _address(value), help="Serve an MJPEG stream, status page and /metrics (host 127.0.0.1 unless given).")
@click.option("--max-frames", type=click.IntRange(min=1), help="Stop after this many frames.")
@click.option("--duration", type=positive(), help="Stop after this many seconds.")
@click.option("--realtime", is_flag=True, help="Play a file at its frame rate, dropping frames the model cannot keep up with.")
@click.option("--loop", is_flag=True, help="Replay a file or image folder forever.")
@click.option("--top-k", type=click.IntRange(min=1), default=1, show_default=True, help="Classes reported per frame.")
@click.option("--log-every", type=positive(), default=10.0, show_default=True,
              metavar="SECONDS", help="Log FPS and latency this often.")
@click.option("--timeout", type=positive(), default=10.0, show_default=True,
              metavar="SECONDS", help="Opening/reading timeout of network sources.")
@click.option("--score-threshold", type=Number(0, 1), default=None,
              help="Detection bundles: keep detections scoring at least this [default: the bundle's nms.score_threshold].")
@threads_option()
@click.option("--cache-dir", type=click.Path(), help="TensorRT engine cache (default ~/.cache/edgekit).")
@analytics_options
def command(bundle, source_args, camera, source_opts, sources_file, batch_timeout, allow_missing, width, height, fps,
            backend, precision, allow_failed_gate, json_path,
            record, display, serve,
            max_frames, duration, realtime, loop, top_k, log_every, timeout, score_threshold, threads,
            cache_dir, **analytics):
    """Run BUNDLE on frames from each SOURCE (or --camera/--source/--sources-file): cameras, streams,
    video files or image folders.

    \b
    SOURCE: 0 or /dev/videoN, csi://N, rtsp://..., http(s)://... (MJPEG), gst:PIPELINE,
    a video file, an image folder; NAME=SOURCE names it (door=rtsp://...), else its index does.
    Several sources run as one batched loop: one model call for the newest frame of each, results
    tagged with the source's name (JSON "source", /stream/NAME.mjpg, --record out/{source}.mkv).
    Results go to any mix of --json, --record, --display and --serve; with none of them, one line
    per result is printed (a burst, then at most 2 a second). Live sources that drop out
    are reopened with backoff (the first open must succeed unless --allow-missing); the run ends
    when every file has ended and no live source is left. SIGINT/SIGTERM
    finish the current frame, close every output and exit 0. Under systemd it sends READY=1 after
    the first frame, WATCHDOG=1 while every stage is making progress, and STATUS= with the FPS.
    """
    import logging
    import os

    from edgekit.cli import is_quiet, say
    from edgekit.stream.loop import run_loop

    given = the_sources(source_args, camera, source_opts, sources_file)
    if serve and any(os.path.exists(g.split("=", 1)[-1]) for g in given) and not (realtime and loop):
        logging.getLogger("edgekit.run").warning(
            "--serve on a file or folder stops at its end, as fast as it is read; add --realtime --loop to keep "
            "serving it at its frame rate")

    config, events = analytics_from_options(**analytics)
    summary = run_loop(
        bundle,
        given, sources_file=sources_file,
        batch_timeout=batch_timeout, allow_missing=allow_missing,
        width=width, height=height, fps=fps, backend=backend, precision=precision,
        allow_failed_gate=allow_failed_gate, json_path=json_path, record=record, display=display, serve=serve,
        console=not (json_path or record or display or serve or is_quiet()), max_frames=max_frames, duration=duration,
        realtime=realtime,
        loop=loop, top_k=top_k, log_every=log_every, timeout=timeout, intra_op_threads=threads, cache_dir=cache_dir,
        score_threshold=score_threshold, analytics=config, events=events,
    )
    say(summary["text"], err=True)
    if summary["frames"] == 0 and summary["stopped_by"] == "end of stream":  # not what was asked: say so
        from edgekit.errors import InputError

        raise InputError(f"no frame of {', '.join(given) or sources_file} could be read (see the warnings above)")


def _address(value):
    """``--serve``'s value, refused at parsing unless [HOST:]PORT (``service install`` checks it so)."""
    if value is not None:
        from edgekit.stream.server import parse_address

        parse_address(value)  # UsageError: --serve needs HOST:PORT or PORT
    return value


def the_sources(source_args, camera, source_opts, sources_file=None) -> list[str]:
    """The sources given: each SOURCE, then --camera, then each --source; UsageError for none."""
    from edgekit.errors import UsageError

    given = [*source_args, *([] if camera is None else [str(camera)]), *source_opts]
    if not given and sources_file is None:
        raise UsageError("give a SOURCE (e.g. 0 or video.mp4), --camera N, --source URI or --sources-file PATH")
    return given


def check_run_options(args) -> dict:
    """Parse ``edgekit run BUNDLE ARGS``'s options with run's own parser, without running anything
    (``service install`` checks its RUN_OPTIONS so); UsageError naming what run would refuse."""
    from edgekit.errors import UsageError

    try:
        ctx = command.make_context("run", ["BUNDLE", *args], resilient_parsing=False)
    except click.ClickException as exc:
        raise UsageError(f"run options: {exc.format_message()}") from exc
    p = ctx.params
    the_sources(p["source_args"], p["camera"], p["source_opts"], p["sources_file"])
    return p

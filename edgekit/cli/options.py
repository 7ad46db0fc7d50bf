"""Options shared by several commands, so one concept has one name everywhere.

``export --int8`` and ``quantize`` take the same INT8 options (:func:`int8_options`); the spellings
an older release used are kept as hidden aliases. Numbers are checked at parsing: :class:`Number` refuses
``nan``/``inf`` and values out of range, ``--threads`` is bounded by the CPU count.
"""

from __future__ import annotations

import functools
import math
import os

import click

from edgekit.graph.targets import valid_names

TARGET_HELP = (
    "JetPack or TensorRT version to check for (jp6.1 and trt-10.3 also work): "
    + ", ".join(valid_names()) + "."
)
CALIB_METHODS = ("auto", "entropy", "percentile", "minmax")  # edgekit.quant.qdq.METHODS, and auto


class Number(click.FloatRange):
    """A finite float within a range (click's FloatRange lets ``nan`` through every bound)."""

    name = "number"

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


def positive() -> Number:
    """A finite number > 0 (seconds, frame rates)."""
    return Number(min=0, min_open=True)


def max_threads() -> int:
    """The most ``--threads`` accepts: 4 per CPU this process may use (more only thrash)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return 4 * max(1, cpus)


def threads_option(help_: str = "ONNX Runtime intra-op threads (default: its choice).", flag: str = "--threads"):
    """``--threads N`` (or ``flag``), 1 to 4 per CPU."""
    return click.option(flag, type=click.IntRange(1, max_threads()), help=f"{help_[:-1]}; 1-{max_threads()}.")


INT8_OPTIONS = (
    click.option("--calib-images", type=click.Path(), default=None,
                 help="Calibration images: a folder (searched recursively; jpg, png, bmp) or a video file."),
    click.option("--method", type=click.Choice(CALIB_METHODS), default="auto", show_default=True,
                 help="How activation ranges are chosen (auto: the one closest to FP32)."),
    click.option("--num-images", type=click.IntRange(min=1), default=500, show_default=True,
                 help="Calibration images to use (warns below 100)."),
    click.option("--holdout", type=click.IntRange(min=0), default=200, show_default=True,
                 help="Images held out of calibration to gate the result (0: no gate)."),
    click.option("--gate-images", type=click.Path(), default=None,
                 help="A labelled folder (one subfolder per label; for a detector a YOLO/COCO dataset) to gate on "
                      "instead of held-out images."),
    click.option("--max-drop", type=Number(min=0), default=1.0, show_default=True,
                 help="Largest allowed top-1 (detectors: mAP@0.5) drop, in points."),
    click.option("--every", type=click.IntRange(min=1), default=10, show_default=True, help="Sample a video every N frames."),
    click.option("--seed", type=int, default=0, show_default=True, help="Shuffling seed."),
    click.option("--keep-float", multiple=True, metavar="NODE",
                 help="Leave this node in float (repeatable; `edgekit inspect BUNDLE --nodes` lists them)."),
    click.option("--fp16/--no-fp16", default=True, show_default=True, help="Also add an FP16 model (TensorRT 11)."),
    click.option("--cpu-variant", is_flag=True,
                 help="Also add an INT8 model only ONNX Runtime on the CPU uses: asymmetric uint8 activations, "
                      "ReLUs fused, all but the score head quantized "
                      "(MobileNetV2 128x128 on x86: 1.2-1.7x FP32 at batch 1, 2.2-2.5x at 32)."),
)

# old spelling -> (the option it stands for, its type)
INT8_ALIASES = {
    "--images": ("calib_images", click.Path()),  # quantize before 0.2
    "--calib-method": ("method", click.Choice(CALIB_METHODS)),  # export before 0.2
    "--calib-count": ("num_images", click.IntRange(min=1)),  # export before 0.2
}


def _alias_param(flag: str) -> str:
    return "alias_" + flag.lstrip("-").replace("-", "_")


# the parameters int8_options adds (their old spellings too: ALIAS_PARAMS)
INT8_PARAMS = ("calib_images", "method", "num_images", "holdout", "gate_images", "max_drop", "every", "seed",
               "keep_float", "fp16", "cpu_variant")
ALIAS_PARAMS = tuple(_alias_param(flag) for flag in INT8_ALIASES)


def int8_options(f):
    """Add the INT8 options (and their hidden old spellings) to a command."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        for flag, (name, _) in INT8_ALIASES.items():
            value = kwargs.pop(_alias_param(flag))
            if value is not None:
                kwargs[name] = value
        return f(*args, **kwargs)

    for flag, (_, kind) in INT8_ALIASES.items():
        wrapper = click.option(flag, _alias_param(flag), type=kind, default=None, hidden=True)(wrapper)
    for option in reversed(INT8_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


def int8_kwargs(params: dict) -> dict:
    """The keyword arguments of :func:`edgekit.quant.quantize.quantize_bundle` among a command's params."""
    kwargs = {name: params[name] for name in INT8_PARAMS if name in params and name != "calib_images"}
    kwargs["keep_float"] = tuple(kwargs["keep_float"])
    return kwargs

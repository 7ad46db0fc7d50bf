"""The ``edgekit`` command: a thin skin over the Python API.

Each subcommand lives in ``edgekit/cli/<name>.py`` and defines ``command``. Modules are imported only
when their subcommand runs, and import their heavy dependencies (TensorFlow, TensorRT) inside the
callback, so ``edgekit --help`` stays fast. Errors a user can cause arrive as
:class:`~edgekit.errors.EdgekitError` and leave as one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import errno
import importlib
import logging
import platform
import sys

import click

from edgekit import __version__
from edgekit.errors import EdgekitError, UsageError, first_line

# name -> (module, one-line help). The help is here so that listing commands imports nothing.
COMMANDS = {
    "sample-data": ("edgekit.cli.sample_data", "Write a bundled sample image set (real digits; --task detect) and a video."),
    "train": ("edgekit.cli.train", "Train a Keras classifier (class folders) or detector (YOLO/COCO, --task detect)."),
    "export": ("edgekit.cli.export", "Convert a Keras/TF model to a TensorRT-ready ONNX bundle."),
    "inspect": ("edgekit.cli.inspect", "Summarise a bundle: I/O, ops, target verdict, sizes, hashes."),
    "quantize": ("edgekit.cli.quantize", "Add an INT8 (Q/DQ) model to a bundle from calibration images."),
    "validate": ("edgekit.cli.validate", "Accuracy gate: every precision of a bundle on labelled images."),
    "build": ("edgekit.cli.build", "Build (or fetch from cache) a TensorRT engine for a bundle."),
    "bench": ("edgekit.cli.bench", "Measure a bundle's throughput and latency on a backend."),
    "run": ("edgekit.cli.run", "Run the inference loop on a camera, stream, video or image folder."),
    "doctor": ("edgekit.cli.doctor", "Check this machine for what edgekit needs; --selftest proves TensorRT."),
    "service": ("edgekit.cli.service", "Install, remove or inspect the systemd service."),
}
# Workstation commands need the host extra (TensorFlow ...), hence this Python; the rest also run on 3.8.
HOST_COMMANDS = ("sample-data", "train", "export", "quantize", "validate")
HOST_PYTHON = (3, 10)


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        if name in HOST_COMMANDS and sys.version_info < HOST_PYTHON:
            raise UsageError(
                f"`edgekit {name}` is a workstation command and needs Python >= {'.'.join(map(str, HOST_PYTHON))}"
                f" (TensorFlow); this is Python {platform.python_version()}, which runs doctor, build, bench, run and service"
            )
        module = importlib.import_module(COMMANDS[name][0])
        return with_global_options(module.command)

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, help_) in COMMANDS.items()])


class _Formatter(logging.Formatter):
    def format(self, record):
        prefix = "edgekit: " if record.levelno < logging.WARNING else f"edgekit: {record.levelname.lower()}: "
        return prefix + record.getMessage()


_verbosity = {"verbose": 0, "quiet": False}


def setup_logging(verbosity: int) -> None:
    """edgekit's log lines on stderr: -1 warnings only, 0 info, 1+ debug (third-party output shown too)."""
    from edgekit import quiet

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger("edgekit")
    root.handlers[:] = [handler]
    root.setLevel({-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG))
    root.propagate = False
    quiet.set_verbose(verbosity > 0)


def _set_verbosity(ctx, param, value):
    if value:
        _verbosity[param.name] = _verbosity[param.name] + value if param.name == "verbose" else True
        setup_logging(-1 if _verbosity["quiet"] else _verbosity["verbose"])


VERBOSE_HELP = "More log output, third-party output included (repeat for debug)."
QUIET_HELP = "Only warnings and errors: no progress, no summary lines."


def with_global_options(command: click.Command) -> click.Command:
    """Accept -v/-q after the subcommand too (``edgekit run B 0 -q``), in every subcommand."""
    if getattr(command, "_edgekit_globals", False):
        return command
    command._edgekit_globals = True
    for sub in getattr(command, "commands", {}).values():
        with_global_options(sub)
    command.params += [
        click.Option(["-v", "--verbose"], count=True, expose_value=False, is_eager=True, callback=_set_verbosity,
                     help=VERBOSE_HELP),
        click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, is_eager=True, callback=_set_verbosity,
                     help=QUIET_HELP),
    ]
    return command


def is_quiet() -> bool:
    """True under -q (given before or after the subcommand)."""
    return _verbosity["quiet"]


def say(message: str, err: bool = False) -> None:
    """A summary line (``wrote …``, ``stopped …``): printed unless -q."""
    if not is_quiet():
        click.echo(message, err=err)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekit")
@click.option("-v", "--verbose", count=True, help=VERBOSE_HELP)
@click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP)
def cli(verbose: int, quiet: bool):
    """edgekit: a TensorFlow/Keras model from a workstation to a camera on an NVIDIA Jetson.

    \b
    Host:   sample-data -> train -> export [--int8] -> validate
    Device: doctor -> build -> bench -> run -> service install
    Without TensorRT every device step runs on ONNX Runtime on the CPU.
    -v/-q work before or after the command.
    """
    _verbosity.update(verbose=verbose, quiet=quiet)
    setup_logging(-1 if quiet else verbose)


def fail(message: str, code: int = 1) -> None:
    click.echo(f"edgekit: error: {message}", err=True)
    sys.exit(code)


# other tools' option names (Ultralytics, ...) -> what edgekit calls the same thing, per command's options
FIELD_NAMES = {
    "--conf": ("--score-threshold", "--threshold"), "--confidence": ("--score-threshold",),
    "--iou": ("--iou-threshold",), "--imgsz": ("--image-size",), "--img-size": ("--image-size",),
    "--device": ("--backend",), "--show": ("--display",), "--data": ("--images", "--calib-images"),
    "--batch-size": ("--batch",), "--batch": ("--batch-size",), "--half": ("--precision",),
}
DEVICE_HINT = " (--backend onnxruntime runs on the CPU, --backend tensorrt on the GPU)"


def _field_name(exc: click.ClickException, ctx) -> str | None:
    """For an unknown option another tool spells so (``--conf``), the message naming edgekit's option, if
    this command has one; else None (click's own message and suggestion)."""
    if not isinstance(exc, click.NoSuchOption) or ctx is None:
        return None
    name = exc.option_name.split("=", 1)[0]
    have = {opt for p in ctx.command.params for opt in p.opts}
    ours = next((o for o in FIELD_NAMES.get(name, ()) if o in have), None)
    if ours is None:
        return None
    return f"no such option: {name}; edgekit calls it {ours}" + (DEVICE_HINT if name == "--device" else "")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning user errors into one line and an exit code."""
    try:
        rv = cli.main(args=argv, prog_name="edgekit", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        fail((_field_name(exc, ctx) or exc.format_message().replace("\n", " ")) + hint, exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        fail("interrupted", 130)
    except EdgekitError as exc:
        fail(str(exc), exc.exit_code)
    except MemoryError:
        fail("out of memory")
    except RecursionError:
        fail("an input is nested too deeply (a corrupt JSON or YAML file?)")
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            sys.exit(0)
        where = f": {exc.filename}" if exc.filename else ""
        fail(f"{exc.strerror or exc}{where}")
    except Exception as exc:  # a bug, not a user error: one line, the traceback with -v
        if logging.getLogger("edgekit").isEnabledFor(logging.DEBUG):
            raise
        fail(f"internal error ({type(exc).__name__}: {first_line(exc)}); rerun with -v for the traceback and "
             "please report it")
    sys.exit(rv if isinstance(rv, int) else 0)

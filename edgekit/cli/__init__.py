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
import sys

import click

from edgekit import __version__
from edgekit.errors import EdgekitError

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


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module = importlib.import_module(COMMANDS[name][0])
        return module.command

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, help_) in COMMANDS.items()])


class _Formatter(logging.Formatter):
    def format(self, record):
        prefix = "edgekit: " if record.levelno < logging.WARNING else f"edgekit: {record.levelname.lower()}: "
        return prefix + record.getMessage()


def setup_logging(verbosity: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger("edgekit")
    root.handlers[:] = [handler]
    root.setLevel({-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG))
    root.propagate = False


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekit")
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def cli(verbose: int, quiet: bool):
    """edgekit: a TensorFlow/Keras model from a workstation to a camera on an NVIDIA Jetson.

    \b
    Host:   sample-data -> train -> export [--int8] -> validate
    Device: doctor -> build -> bench -> run -> service install
    Without TensorRT every device step runs on ONNX Runtime on the CPU.
    """
    setup_logging(-1 if quiet else verbose)


def fail(message: str, code: int = 1) -> None:
    click.echo(f"edgekit: error: {message}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning user errors into one line and an exit code."""
    try:
        rv = cli.main(args=argv, prog_name="edgekit", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        fail("interrupted", 130)
    except EdgekitError as exc:
        fail(str(exc), exc.exit_code)
    except MemoryError:
        fail("out of memory")
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            sys.exit(0)
        where = f": {exc.filename}" if exc.filename else ""
        fail(f"{exc.strerror or exc}{where}")
    sys.exit(rv if isinstance(rv, int) else 0)

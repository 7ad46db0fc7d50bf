from __future__ import annotations

import click


@click.command("doctor")
@click.option("--selftest", is_flag=True, help="Build a tiny model at FP32/FP16/INT8 on TensorRT and compare with ONNX Runtime.")
@click.option("--require-tensorrt", is_flag=True, help="Fail unless TensorRT, pycuda or cuda-python, and a GPU answer.")
@click.option("--cache-dir", type=click.Path(), help="Keep the self-test's engines here (default: a temporary folder).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def command(selftest, require_tensorrt, cache_dir, as_json):
    """Check this machine for what edgekit needs, one line per item with a hint when missing.

    Exits 0 when everything `edgekit run` needs is present (on a machine without TensorRT: the ONNX
    Runtime CPU path); non-zero when a required item is missing, when --require-tensorrt is given and
    TensorRT, the CUDA layer (pycuda or cuda-python) or the GPU is missing, or when --selftest cannot run or a precision fails.
    """
    import json

    from edgekit import doctor
    from edgekit.errors import DeviceError

    report = doctor.environment()
    if require_tensorrt or selftest:
        doctor.require_tensorrt(report)
    results = []
    if selftest and report.ok:
        results = doctor.selftest(cache_dir=cache_dir)
    if as_json:
        click.echo(json.dumps({**report.to_dict(), "selftest": [r.__dict__ for r in results]}, indent=2))
    else:
        click.echo(report.text())
        if results:
            click.echo("self-test (TensorRT vs ONNX Runtime FP32):")
            for r in results:
                click.echo("  " + r.line())
    if not report.ok:
        why = " (--selftest needs TensorRT)" if selftest and not require_tensorrt else ""
        raise DeviceError(f"missing what is required: {', '.join(report.missing_required)}{why}; see the hints above")
    failed = [r.precision for r in results if r.status == "fail"]
    if failed:
        raise DeviceError(f"self-test failed at {', '.join(failed)}")

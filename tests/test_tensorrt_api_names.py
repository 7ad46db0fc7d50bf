"""Every TensorRT name edgekit's TensorRT layer uses exists, on the class it is used on, in each release
where that code can run; and the checker (tests/tensorrt_names.py, documented there) fails on each of
its former blind spots. No TensorRT needed."""

from __future__ import annotations

import pytest

from tensorrt_names import (ALL_MAJORS, CONVENTIONAL, RELEASES, RETURNS, SOURCES, analyse, api, flat_names, has,
                            in_flat, kind, lineage, major_of, problems)


# ---- tests ------------------------------------------------------------------------------------
def test_reference_data_present_and_agrees_with_the_compiled_bindings():
    assert [major_of(v) for v in RELEASES] == [8, 8, 10, 10, 11]
    assert has("8.5.3", "IBuilderConfig", "max_workspace_size") and not has("10.3.0", "IBuilderConfig", "max_workspace_size")
    assert has("10.3.0", "IExecutionContext", "execute_async_v3") and not has("10.3.0", "IExecutionContext", "execute_async_v2")
    assert has("10.13.3", "", "IInt8EntropyCalibrator2") and not has("11.1", "", "IInt8EntropyCalibrator2")
    assert has("11.1", "Logger", "ERROR")  # exported from ILogger.Severity into ILogger, inherited
    # Each derived name is in the compiled module of the same (or, for 11.1, the next stored) release.
    for version, flat in (("8.6.1", "8.6.1"), ("10.3.0", "10.3.0"), ("10.13.3", "10.13.3.9"), ("11.1", "11.4.0.106")):
        data = api(version)
        names = set(data["module"]) | {n for c in data["classes"].values() for n in c["names"]}
        missing = sorted(n for n in names if len(n) > 2 and not in_flat(flat, n))
        assert missing == [], (version, missing)


def test_factory_table_names_real_methods():
    for (cls, name), result in RETURNS.items():
        assert any(has(v, cls, name) for v in RELEASES), (cls, name)
        assert any(lineage(v, result) for v in RELEASES), result
    for cls in CONVENTIONAL.values():
        assert all(lineage(v, cls) for v in RELEASES), cls


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_every_tensorrt_name_exists_on_its_class_where_it_runs(path):
    assert problems(path.read_text()) == []


def test_receivers_are_typed_from_the_code():
    used = {name for path in SOURCES for name, _, _ in analyse(path.read_text())}
    for name in ("ICudaEngine.num_io_tensors", "ICudaEngine.get_tensor_name", "ICudaEngine.get_tensor_mode",
                 "IExecutionContext.set_input_shape", "IExecutionContext.set_tensor_address",
                 "IExecutionContext.execute_async_v3", "Builder.build_serialized_network",
                 "IBuilderConfig.set_memory_pool_limit", "Runtime.deserialize_cuda_engine",
                 "Builder.create_optimization_profile", "IBuilderConfig.create_timing_cache",
                 "ITimingCache.serialize", "trt.IProgressMonitor", "IProgressMonitor.phase_start",
                 "trt.IInt8EntropyCalibrator2", "IInt8EntropyCalibrator2.get_batch", "ILogger.Severity.ERROR",
                 "Logger.ERROR", "OnnxParser.parse_from_file", "ICudaEngine.create_execution_context"):
        assert name in used, name
    for removed in ("execute_async_v2", "execute_v2", "build_engine", "max_workspace_size", "get_binding_shape"):
        assert not any(u.endswith("." + removed) for u in used), removed


def test_version_gated_names_are_gated():
    by_name = {}
    for path in SOURCES:
        for name, _, majors in analyse(path.read_text()):
            by_name.setdefault(name, set()).update(majors)
    assert by_name["NetworkDefinitionCreationFlag.EXPLICIT_BATCH"] == {8}
    assert 11 not in by_name["IBuilderConfig.int8_calibrator"]
    assert 11 not in by_name["trt.IInt8EntropyCalibrator2"]  # through entropy_calibrator's call site
    assert 8 not in by_name["trt.IProgressMonitor"]
    assert by_name["IExecutionContext.execute_async_v3"] == set(ALL_MAJORS)


@pytest.mark.parametrize("snippet, finding", [
    ("def f(config, trt):\n    config.max_workspace_size = 1 << 30\n",
     "line 2: IBuilderConfig.max_workspace_size is not in TensorRT 10.3.0"),
    ("def f(engine, trt):\n    return engine.get_tensor_dtype('x') == trt.DataType.FP16\n",
     "line 2: DataType.FP16 is not in TensorRT 8.5.3"),
    ("def f(trt, logger):\n    runtime = trt.Runtime(logger)\n    return runtime.num_io_tensors\n",
     "line 3: Runtime.num_io_tensors is not in TensorRT 10.3.0"),
    ("def f(trt, logger):\n    b = trt.Builder(logger)\n    c = b.create_builder_config()\n    c.set_input_shape('x', (1,))\n",
     "line 4: IBuilderConfig.set_input_shape is not in TensorRT 11.1"),
    ("def f(trt, major):\n    if major >= 10:\n        return trt.BuilderFlag.FP16\n",
     "line 3: BuilderFlag.FP16 is not in TensorRT 11.1"),
    ("import tensorrt as trt\nclass L(trt.ILogger):\n    def write(self, severity, msg):\n        pass\n",
     "line 3: ILogger.write is not in TensorRT 8.5.3"),
])
def test_checker_catches_names_on_the_wrong_class(snippet, finding):
    assert finding in problems(snippet)


def test_checker_accepts_right_classes_and_gated_uses():
    assert problems("def f(config, trt):\n    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1)\n") == []
    assert problems("def f(engine):\n    return engine.num_io_tensors\n") == []
    assert problems("def f(trt):\n    return trt.DataType.HALF\n") == []
    good = (
        "def f(context, config, trt, major):\n"
        "    if major < 10:\n        context.execute_async_v2([], 0)\n"
        "    else:\n        context.execute_async_v3(0)\n"
        "    if major < 11:\n        config.set_flag(trt.BuilderFlag.INT8)\n"
    )
    assert problems(good) == []
    assert any("execute_async_v2" in p and "10.3.0" in p for p in problems(good.replace("major < 10", "True")))
    via_call = "def g(trt):\n    return trt.IProgressMonitor\n\ndef f(major, trt):\n    if major >= 10:\n        g(trt)\n"
    assert problems(via_call) == []
    assert problems(via_call.replace("major >= 10", "True")) != []


# Issue 18 item 8 and issue 21: each snippet hides a wrong TensorRT use the checker once let through.
BLIND_SPOTS = [
    ("untyped alias from an untyped parameter",
     "def f(rt, p):\n    eng = rt.deserialize_cuda_engine(p)\n    return eng.get_binding_shape(0)\n",
     "line 3: cannot infer the TensorRT class of the receiver of .get_binding_shape (eng)"),
    ("wrong class through an untyped helper parameter",
     "def helper(x):\n    x.set_input_shape('input', (1, 3, 8, 8))\n",
     "line 2: cannot infer the TensorRT class of the receiver of .set_input_shape (x)"),
    ("tuple target",
     "def f(trt, logger):\n    builder, runtime = trt.Builder(logger), trt.Runtime(logger)\n    return runtime.num_io_tensors\n",
     "line 3: Runtime.num_io_tensors is not in TensorRT 10.3.0"),
    ("tuple target from a call",
     "def f(make):\n    engine_, ctx = make()\n    ctx.execute_async_v2([], 0)\n",
     "line 3: cannot infer the TensorRT class of the receiver of .execute_async_v2 (ctx)"),
    ("import tensorrt",
     "import tensorrt\n\ndef f(logger):\n    return tensorrt.Runtime(logger).num_io_tensors\n",
     "line 4: Runtime.num_io_tensors is not in TensorRT 10.3.0"),
    ("import tensorrt under another name",
     "import tensorrt as t\n\ndef f(config):\n    config.set_flag(t.BuilderFlag.FP16)\n",
     "line 4: BuilderFlag.FP16 is not in TensorRT 11.1"),
    ("from tensorrt import a class",
     "from tensorrt import Runtime\n\ndef f(logger):\n    r = Runtime(logger)\n    return r.num_io_tensors\n",
     "line 5: Runtime.num_io_tensors is not in TensorRT 10.3.0"),
    ("from tensorrt import a removed name",
     "from tensorrt import IInt8EntropyCalibrator2\n",
     "line 1: trt.IInt8EntropyCalibrator2 is not in TensorRT 11.1"),
    ("set_timing_cache without ignore_mismatch (it has no default)",
     "def f(config, cache):\n    config.set_timing_cache(cache)\n",
     "line 2: IBuilderConfig.set_timing_cache takes 2 argument(s) in TensorRT 10.3.0, given 1"),
    ("execute_async_v3 without its stream",
     "def f(context):\n    context.execute_async_v3()\n",
     "line 2: IExecutionContext.execute_async_v3 takes 1 argument(s) in TensorRT 10.3.0, given 0"),
    ("a property called as a method",
     "def f(engine):\n    return engine.num_io_tensors()\n",
     "line 2: ICudaEngine.num_io_tensors is a property in TensorRT 10.3.0, called as a method"),
    ("a with-bound builder",
     "def f(trt, logger):\n    with trt.Builder(logger) as b:\n        return b.max_batch_size\n",
     "line 3: Builder.max_batch_size is not in TensorRT 10.3.0"),
]


@pytest.mark.parametrize("snippet, finding", [c[1:] for c in BLIND_SPOTS], ids=[c[0] for c in BLIND_SPOTS])
def test_checker_fails_on_each_blind_spot(snippet, finding):
    found = problems(snippet)
    assert any(p.startswith(finding) for p in found), found


def test_checker_accepts_the_right_forms_of_the_blind_spots():
    assert problems("def f(config, cache):\n    config.set_timing_cache(cache, False)\n") == []
    assert problems("def f(config, cache):\n    config.set_timing_cache(cache=cache, ignore_mismatch=True)\n") == []
    assert problems("def f(context, stream):\n    context.execute_async_v3(stream)\n") == []
    assert problems("def f(e: 'trt.ICudaEngine'):\n    return e.num_io_tensors\n") == []  # typed by annotation
    assert problems("import tensorrt as t\n\ndef f(eng: t.ICudaEngine):\n    return eng.get_tensor_name(0)\n") == []
    assert problems("def f(rt: 'trt.Runtime', p):\n    eng = rt.deserialize_cuda_engine(p)\n"
                    "    return eng.num_io_tensors\n") == []
    assert problems("def f(trt, logger):\n    with trt.Builder(logger) as b:\n        return b.create_builder_config()\n") == []
    assert problems("def f(args):\n    return args.num_io_tensors\n") != []  # an untyped receiver is never skipped


def test_compiled_names_fallback_does_not_match_by_suffix():
    """A tail of a longer string proves nothing by itself: ``io_tensors`` is only the end of ``num_io_tensors``."""
    flat = "11.4.0.106"
    assert any(n.endswith("io_tensors") and n != "io_tensors" for n in flat_names(flat))
    assert not in_flat(flat, "io_tensors") and not in_flat(flat, "ensor_name")
    assert in_flat(flat, "num_io_tensors")
    assert in_flat(flat, "INPUT")  # stored only as a tail, but a TensorIOMode member in 11.1's sources


def test_signature_data_says_what_the_bindings_declare():
    """derive.py's signatures: properties, and argument counts from pybind11's annotations."""
    for version in RELEASES:
        assert kind(version, "ICudaEngine", "num_io_tensors") == "property", version
        assert kind(version, "IBuilderConfig", "set_timing_cache") == [2, 2], version
        assert kind(version, "IExecutionContext", "set_tensor_address") == [2, 2], version
    assert kind("10.3.0", "IExecutionContext", "execute_async_v3") == [1, 1]
    assert kind("11.1", "Logger", "ERROR") == "property"  # an enum member, exported onto ILogger, inherited

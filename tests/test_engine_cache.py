"""Engine cache: keys, rebuild decisions, atomic plan + sidecar writes. Pure Python: no TensorRT needed.

``load_or_build`` takes the build and deserialize steps as callables; these tests pass small fakes of
them (labelled FAKE below) to drive hit / miss / rebuild without TensorRT.
"""

from __future__ import annotations

import errno
import json
import logging
import pathlib

import pytest

from edgekit.backends.tensorrt.cache import EngineCache, EngineKey, default_cache_dir, rebuild_reason
from edgekit.errors import EdgekitError, InputError

SHAPES = ((1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32))


def key(**changes) -> EngineKey:
    base = dict(onnx_sha256="ab" * 32, tensorrt="10.3.0", gpu="Orin", compute_capability="8.7",
                precision="fp16", shapes=SHAPES, dla_core=None)
    return EngineKey(**{**base, **changes})


class FakeTensorRT:
    """FAKE build/deserialize pair standing in for TensorRT: a 'plan' is bytes tagged with its version."""

    def __init__(self, version="10.3.0", readable=True):
        self.version, self.readable, self.builds = version, readable, 0

    def build(self) -> bytes:
        self.builds += 1
        return f"PLAN:{self.version}:{self.builds}".encode()

    def deserialize(self, data: bytes):
        if not self.readable or not data.startswith(f"PLAN:{self.version}:".encode()):
            return None  # what TensorRT does for a foreign or corrupt plan
        return {"engine": data.decode()}


def test_default_cache_dir_env_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("EDGEKIT_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "edgekit"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "edgekit"
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path / "svc"))
    assert default_cache_dir() == tmp_path / "svc"
    assert EngineCache().root == tmp_path / "svc"


def test_key_names_plans_by_choices_not_by_tensorrt_or_gpu():
    base = key().choice_id()
    for change in ({"onnx_sha256": "cd" * 32}, {"precision": "int8"}, {"dla_core": 0},
                   {"shapes": ((1, 3, 32, 32),) * 3}, {"calibration": "x"}):
        assert key(**change).choice_id() != base, change
    assert key(tensorrt="10.13.3.9", gpu="Thor", compute_capability="11.0").choice_id() == base
    assert key().to_dict()["shapes"] == [list(s) for s in SHAPES]


def test_rebuild_reasons(tmp_path):
    cache = EngineCache(tmp_path)
    k = key()
    plan, reason = cache.lookup(k)
    assert reason == "no cached engine"
    cache.store(k, b"plan-bytes")
    assert cache.lookup(k) == (plan, None)

    other_trt = rebuild_reason(key(tensorrt="10.13.3.9"), json.loads(cache.sidecar_path(plan).read_text()), plan)
    assert "TensorRT 10.3.0" in other_trt and "10.13.3.9" in other_trt
    other_gpu = rebuild_reason(key(gpu="Xavier", compute_capability="7.2"), json.loads(cache.sidecar_path(plan).read_text()), plan)
    assert "Orin" in other_gpu and "Xavier" in other_gpu
    assert "metadata" in rebuild_reason(k, None, plan)
    assert "different model" in rebuild_reason(key(dla_core=1), json.loads(cache.sidecar_path(plan).read_text()), plan)

    plan.write_bytes(b"plan-by")  # truncated behind the cache's back
    assert "does not match" in cache.lookup(k)[1]
    cache.sidecar_path(plan).write_text("{not json")
    assert "metadata" in cache.lookup(k)[1]


def test_gpu_identity_and_device_in_keys(tmp_path):
    """Jetson modules of one family share a name and compute capability: SMs and memory tell them apart."""
    cache = EngineCache(tmp_path)
    nx16 = key(multiprocessors=8, memory_mib=15000)
    plan = cache.store(nx16, b"plan")
    sidecar = json.loads(cache.sidecar_path(plan).read_text())
    nx8 = key(multiprocessors=4, memory_mib=7000)
    assert nx8.choice_id() == nx16.choice_id()  # the same plan file, rebuilt in place ...
    reason = rebuild_reason(nx8, sidecar, plan)
    assert "8 SMs, 15000 MiB" in reason and "4 SMs, 7000 MiB" in reason  # ... with the reason said
    assert rebuild_reason(nx16, sidecar, plan) is None
    assert key(device=1).choice_id() != key().choice_id()  # a second GPU keeps its own plans
    paths = {cache.timing_cache_path(k) for k in (nx16, nx8, key(device=1, multiprocessors=8, memory_mib=15000))}
    assert len(paths) == 3 and all(p.parent == tmp_path / "timing" for p in paths)


def test_plan_is_plain_and_metadata_is_a_sidecar(tmp_path):
    cache = EngineCache(tmp_path)
    plan = cache.store(key(), b"\x00serialized-engine", source_model="fp32")
    assert plan.read_bytes() == b"\x00serialized-engine"  # nothing prepended: trtexec/DeepStream read it
    meta = json.loads(cache.sidecar_path(plan).read_text())
    assert meta["key"] == key().to_dict() and meta["plan_bytes"] == 18 and meta["source_model"] == "fp32"
    assert plan.parent == tmp_path / "engines" and plan.suffix == ".plan"


def test_load_or_build_hit_miss_and_rebuilds(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="edgekit")
    cache = EngineCache(tmp_path)
    trt = FakeTensorRT()
    engine, plan, built = cache.load_or_build(key(), trt.build, trt.deserialize)
    assert built and trt.builds == 1 and engine == {"engine": "PLAN:10.3.0:1"}
    assert "no cached engine" in caplog.text

    engine, _, built = cache.load_or_build(key(), trt.build, trt.deserialize)
    assert not built and trt.builds == 1 and engine == {"engine": "PLAN:10.3.0:1"}

    # JetPack upgrade: same cache, new TensorRT -> rebuilt in place with a line saying why.
    caplog.clear()
    new = FakeTensorRT("10.13.3.9")
    engine, plan2, built = cache.load_or_build(key(tensorrt="10.13.3.9"), new.build, new.deserialize)
    assert built and plan2 == plan and "built by TensorRT 10.3.0, this is 10.13.3.9" in caplog.text
    assert len(list((tmp_path / "engines").glob("*.plan"))) == 1

    # A plan the runtime refuses (same version tag in the sidecar, unreadable bytes) is rebuilt.
    caplog.clear()
    unreadable = FakeTensorRT("10.13.3.9", readable=False)
    with pytest.raises(EdgekitError, match="cannot deserialize the engine it just built"):
        cache.load_or_build(key(tensorrt="10.13.3.9"), unreadable.build, unreadable.deserialize)
    assert "failed to deserialize" in caplog.text

    forced = FakeTensorRT("10.13.3.9")
    _, _, built = cache.load_or_build(key(tensorrt="10.13.3.9"), forced.build, forced.deserialize, force=True)
    assert built and forced.builds == 1


def test_deserialize_exception_counts_as_unreadable(tmp_path):
    cache = EngineCache(tmp_path)
    cache.store(key(), b"PLAN:old")
    calls = []

    def deserialize(data):
        calls.append(data)
        if data == b"PLAN:old":
            raise RuntimeError("Serialization assertion magicTagRead == kMAGIC_TAG failed")
        return "engine"

    engine, _, built = cache.load_or_build(key(), lambda: b"PLAN:new", deserialize)
    assert (engine, built, calls) == ("engine", True, [b"PLAN:old", b"PLAN:new"])


def test_unwritable_cache_fails_before_building(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    trt = FakeTensorRT()
    with pytest.raises(InputError, match="not writable.*--cache-dir"):
        EngineCache(blocker).load_or_build(key(), trt.build, trt.deserialize)
    assert trt.builds == 0  # no long build whose result could not be kept


def _leftovers(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".probe"))


def test_disk_full_mid_plan_write_leaves_nothing(tmp_path, monkeypatch):
    cache = EngineCache(tmp_path)
    old = cache.store(key(), b"PLAN:10.3.0:old")
    real_write = pathlib.Path.write_bytes

    def half_then_full(self, data):
        real_write(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", half_then_full)
    trt = FakeTensorRT("10.13.3.9")
    with pytest.raises(EdgekitError, match="disk full"):
        cache.load_or_build(key(tensorrt="10.13.3.9"), trt.build, trt.deserialize)
    monkeypatch.undo()
    assert old.read_bytes() == b"PLAN:10.3.0:old"  # the old plan is intact, no half plan, no temp file
    assert _leftovers(tmp_path) == sorted([old.name, old.name + ".json"])


def test_failed_sidecar_write_removes_the_plan(tmp_path, monkeypatch):
    import edgekit.backends.tensorrt.cache as cache_mod

    def full(*a, **k):
        raise EdgekitError("disk full while writing sidecar; nothing was written")

    monkeypatch.setattr(cache_mod, "write_json", full)
    with pytest.raises(EdgekitError, match="disk full"):
        EngineCache(tmp_path).store(key(), b"PLAN")
    assert _leftovers(tmp_path) == []

"""Mutation check: do the tests catch the bugs they exist for?

Copies the working tree (tracked and untracked, not ignored files) to a temporary folder, then for
each named mutation below applies it to a fresh copy of the file it changes, runs the tests named for
it and restores the file. A mutation is *caught* when at least one of its tests fails. First the same
tests run unmutated and must pass (else the table would mean nothing). Prints the table
mutation -> caught by (failing tests); exits 1 if any mutation survives. Not run by CI (minutes).

    python benchmarks/mutation_check.py [--only NAME ...] [--list]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Mutation:
    name: str
    file: str  # relative to the repository root
    pattern: str  # a regular expression that must match exactly once ...
    replacement: str  # ... replaced by this (re.sub syntax); "$APPEND" appends ``replacement`` to the file
    tests: tuple  # pytest node ids or files

    def apply(self, text: str) -> str:
        if self.pattern == "$APPEND":
            return text + self.replacement
        found = len(re.findall(self.pattern, text, flags=re.M))
        if found != 1:
            raise SystemExit(f"mutation {self.name!r}: pattern found {found} times in {self.file} (the code moved?)")
        return re.sub(self.pattern, self.replacement, text, flags=re.M)


DETECTION = ("tests/test_detection_gate.py",)
NMS = ("tests/test_nms_parity.py",)
VERDICTS = ("tests/test_verdict_types.py",)
SELFTEST = ("tests/test_selftest_judge.py",)
ATOMIC = ("tests/test_disk_full_writes.py",)
NAMES = ("tests/test_tensorrt_api_names.py",)
TRT_MODULE = "edgekit/backends/tensorrt/__init__.py"

MUTATIONS = [
    Mutation("detection gate disabled (drop interval <= max_drop + 1000)", "edgekit/quant/detection_gate.py",
             r"r\.drop_interval\[0\] <= max_drop\b", "r.drop_interval[0] <= max_drop + 1000", DETECTION),
    Mutation("NMS never suppresses (hit = iou > 2.0)", "edgekit/nms.py",
             r"hit = iou >=? iou_threshold", "hit = iou > 2.0", NMS),
    Mutation("NMS suppresses only above the threshold (ONNX's >, not the plugin's >=)", "edgekit/nms.py",
             r"hit = iou >= iou_threshold", "hit = iou > iou_threshold", NMS),
    Mutation("schema: usable type removed", "edgekit/schema/manifest.schema.json",
             r'^\s*"usable": \{"type": "boolean"\},\n', "", VERDICTS),
    Mutation("schema: validation.passed type removed", "edgekit/schema/manifest.schema.json",
             r'"passed": \{"type": "boolean"\},\s*', "", VERDICTS),
    Mutation("Bundle.usable accepts anything but False", "edgekit/bundle.py",
             r'\.get\("usable", True\) is True', '.get("usable", True) is not False', VERDICTS),
    Mutation("selftest INT8 tolerance 1.0 (one-hot passes)", "edgekit/doctor.py",
             r'"int8": 1e-2\}', '"int8": 1.0}', SELFTEST),
    Mutation("selftest back to saturated colour frames and 5e-2", "edgekit/doctor.py",
             r'(?s)"int8": 1e-2\}(.*)inputs = bundle\.preprocess\.batch\(natural_frames\(\)\)',
             r'"int8": 5e-2}\1inputs = bundle.preprocess.batch(__import__("edgekit.tiny").tiny.colour_frames())',
             SELFTEST),
    Mutation("selftest judges top-1 only", "edgekit/doctor.py",
             r"ok = err <= TOLERANCE\[precision\] and agree", "ok = agree", SELFTEST),
    Mutation("atomic write commits the temporary on error", "edgekit/atomic.py",
             r"(    except OSError as exc:\n)(        raise _explain\(exc, path\) from exc\n    finally:\n"
             r"        with contextlib\.suppress\(FileNotFoundError\):\n            tmp_path\.unlink\(\))",
             r"\1        os.replace(tmp_path, path)\n\2", ATOMIC),
    Mutation("atomic write leaves its temporary on error", "edgekit/atomic.py",
             r"        with contextlib\.suppress\(FileNotFoundError\):\n            tmp_path\.unlink\(\)\n",
             "        pass\n", ATOMIC),
    Mutation("TensorRT: wrong-class call on an untyped receiver", TRT_MODULE, "$APPEND",
             "\n\ndef _mutant(rt, plan):\n    eng = rt.deserialize_cuda_engine(plan)\n    return eng.get_binding_shape(0)\n",
             NAMES),
    Mutation("TensorRT: set_timing_cache without ignore_mismatch", TRT_MODULE, "$APPEND",
             "\n\ndef _mutant(config, cache):\n    config.set_timing_cache(cache)\n", NAMES),
    Mutation("TensorRT: a property called as a method", TRT_MODULE, "$APPEND",
             "\n\ndef _mutant(engine):\n    return engine.num_io_tensors()\n", NAMES),
    Mutation("TensorRT: removed name via `from tensorrt import`", TRT_MODULE, "$APPEND",
             "\n\ndef _mutant():\n    from tensorrt import IInt8EntropyCalibrator2\n    return IInt8EntropyCalibrator2\n",
             NAMES),
]


def copy_tree(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def run_tests(root: Path, tests: tuple) -> tuple[int, list[str], float]:
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                           "--tb=no", *tests], cwd=root, env=env, capture_output=True, text=True)
    failed = sorted({m.split(" - ")[0] for m in re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, re.M)})
    return proc.returncode, failed, time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="names (substrings) of the mutations to run")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or any(o in m.name for o in args.only)]
    if args.list:
        for m in chosen:
            print(f"{m.name}  ({m.file}; {', '.join(m.tests)})")
        return 0
    with tempfile.TemporaryDirectory(prefix="edgekit-mutation-") as tmp:
        root = Path(tmp)
        copy_tree(root)
        tests = tuple(sorted({t for m in chosen for t in m.tests}))
        code, failed, seconds = run_tests(root, tests)
        if code != 0:
            print(f"the tests fail without any mutation ({', '.join(failed) or f'pytest exit {code}'}): fix them first")
            return 2
        print(f"baseline: {', '.join(tests)} pass unmutated ({seconds:.0f} s)\n")
        rows = []
        for m in chosen:
            path = root / m.file
            original = path.read_text()
            path.write_text(m.apply(original))
            try:
                code, failed, seconds = run_tests(root, m.tests)
            finally:
                path.write_text(original)
            caught = code == 1 and failed
            names = [f.split("::", 1)[-1] for f in failed]
            shown = ", ".join(names[:2]) + (f" (+{len(names) - 2} more)" if len(names) > 2 else "")
            rows.append((m.name, shown if caught else f"NOT CAUGHT (pytest exit {code})", seconds))
            print(f"  {'caught' if caught else 'SURVIVED'}: {m.name} ({seconds:.0f} s)", flush=True)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'mutation':<{width}}  caught by (failing tests)")
    for name, by, _ in rows:
        print(f"{name:<{width}}  {by}")
    survived = [r for r in rows if r[1].startswith("NOT CAUGHT")]
    print(f"\n{len(rows) - len(survived)}/{len(rows)} mutations caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())

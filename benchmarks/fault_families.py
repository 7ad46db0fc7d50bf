"""Issue 19's fault families for benchmarks/fault_sweep.py: each sweep returns (cases tried, cases clean).

* option numbers: nan, inf, negative, zero and out-of-range values; clean = one ``edgekit: error:`` line.
* output paths: --json/--record onto a device (mknod: like /dev/null, like /dev/full), a FIFO (with and
  without a reader), a symlink, the source, each other; clean = the node stays what it was (a device, FIFO, link), a reader
  gets the lines, an input is never touched, and a refusal is one line.
* dataset values: YOLO/COCO files with non-finite, wrong-kind, null, nested or repeated values; clean =
  a counted skip or one InputError as expected for the value, never another exception.
* http: 70 slow clients of one address, then real requests from another; HEAD per route; slow clients
  cut at the request deadline; clean = a 200 (an empty body for HEAD), an EOF for a cut client.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import stat
import threading
import urllib.request
from pathlib import Path

import cv2
import numpy as np

from edgekit.cli import main


def attempt(args) -> tuple[int, str, str]:
    """``edgekit ARGS`` in process: (exit code, stdout, stderr); a traceback that got through counts as one."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:  # a traceback the CLI let through
            return 1, "", f"Traceback: {type(exc).__name__}: {exc}"
    return code, out.getvalue(), err.getvalue()


def one_line_error(code: int, err: str) -> bool:
    errors = [line for line in err.splitlines() if line.startswith("edgekit: error:")]
    return code != 0 and len(errors) == 1 and "Traceback" not in err


def _report(name: str, ok: bool, detail: str = "") -> bool:
    if not ok:
        print(f"NOT CLEAN  {name}: {detail.strip().splitlines()[-1:] if detail else ''}")
    return ok


def _video(path: Path, frames: int = 12) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 15.0, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), (0, 0, 255) if i % 2 else (0, 255, 0), np.uint8))
    writer.release()
    return path


# ---- option numbers ------------------------------------------------------------------------------
def option_numbers(bundle: Path, tmp: Path) -> tuple[int, int]:
    tmp.mkdir(parents=True)
    video = _video(tmp / "v.mp4")
    run = ["run", bundle, video]
    cases = {f"run {' '.join(extra)}": run + extra for extra in (
        ["--fps", "-5"], ["--fps", "0", "--realtime"], ["--fps", "nan"], ["--fps", "inf"], ["--duration", "nan"],
        ["--duration", "-1"], ["--log-every", "nan"], ["--log-every", "0"], ["--timeout", "nan"], ["--timeout", "inf"],
        ["--threads", "-1"], ["--threads", "0"], ["--threads", "100000"], ["--serve", "notaport"],
        ["--serve", "1:99999"], ["--max-frames", "0"], ["--top-k", "0"], ["--score-threshold", "nan"], ["--score-threshold", "inf"])}
    cases.update({
        "validate --max-drop nan": ["validate", bundle, "--images", tmp, "--max-drop", "nan"],
        "validate --max-drop -1": ["validate", bundle, "--images", tmp, "--max-drop", "-1"],
        "quantize --max-drop nan": ["quantize", bundle, "--calib-images", tmp, "--max-drop", "nan"],
        "quantize --every 0": ["quantize", bundle, "--calib-images", tmp, "--every", "0"],
        "quantize --num-images 0": ["quantize", bundle, "--calib-images", tmp, "--num-images", "0"],
        "bench --threads 100000": ["bench", bundle, "--threads", "100000"],
        "bench --duration nan": ["bench", bundle, "--duration", "nan"],
        "service install --threads 100000": ["service", "install", bundle, "--root", tmp / "r", "--source", video,
                                             "--threads", "100000"],
        "service install --serve notaport": ["service", "install", bundle, "--root", tmp / "r", "--source", video,
                                             "--serve", "notaport"],
        "train --val-split nan": ["train", tmp, "-o", tmp / "m.keras", "--val-split", "nan"],
        "train --epochs 0": ["train", tmp, "-o", tmp / "m.keras", "--epochs", "0"],
        "export --iou-threshold nan": ["export", tmp / "m.keras", "-o", tmp / "o", "--iou-threshold", "nan"],
        "export --tolerance nan": ["export", tmp / "m.keras", "-o", tmp / "o", "--tolerance", "nan"],
        "sample-data --val-split nan": ["sample-data", tmp / "s", "--val-split", "nan"],
    })
    clean = 0
    for name, args in cases.items():
        code, _, err = attempt(args)
        clean += _report(f"option numbers: {name}", one_line_error(code, err), err)
    return len(cases), clean


# ---- output paths --------------------------------------------------------------------------------
def output_paths(bundle: Path, tmp: Path) -> tuple[int, int]:
    tmp.mkdir(parents=True)
    video = _video(tmp / "v.mp4")
    base = ["run", bundle, video, "--max-frames", "3"]
    results = {}

    def device(name, minor=3):
        path = tmp / name
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
        return path

    dev = device("null")
    code, _, err = attempt(base + ["--json", dev])
    results["--json onto a device"] = (code == 0 and stat.S_ISCHR(os.stat(dev).st_mode), err)

    fifo = tmp / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo).read()), daemon=True)
    reader.start()
    code, _, err = attempt(base + ["--json", fifo])
    reader.join(10)
    lines = got[0].splitlines() if got else []
    results["--json onto a FIFO with a reader"] = (code == 0 and len(lines) == 3 and stat.S_ISFIFO(os.stat(fifo).st_mode), err)
    code, _, err = attempt(base + ["--json", fifo])
    results["--json onto a FIFO nobody reads"] = (one_line_error(code, err) and stat.S_ISFIFO(os.stat(fifo).st_mode), err)

    (tmp / "target.jsonl").write_text("old\n")
    os.symlink("target.jsonl", tmp / "link.jsonl")
    code, _, err = attempt(base + ["--json", tmp / "link.jsonl"])
    results["--json onto a symlink"] = (code == 0 and os.path.islink(tmp / "link.jsonl")
                                        and len((tmp / "target.jsonl").read_text().splitlines()) == 3, err)
    full = device("full", minor=7)  # like /dev/full, made here: a broken build replaces no system file
    code, _, err = attempt(base + ["--json", full])
    results["--json onto a full device"] = (one_line_error(code, err) and stat.S_ISCHR(os.stat(full).st_mode), err)

    before = video.read_bytes()
    code, _, err = attempt(base + ["--record", video])
    results["--record onto the source"] = (one_line_error(code, err) and video.read_bytes() == before, err)
    code, _, err = attempt(base + ["--json", tmp / "x.mkv", "--record", tmp / "x.mkv"])
    results["--json X --record X"] = (one_line_error(code, err) and "disk full" not in err, err)
    rec = device("dev.mkv")
    code, _, err = attempt(base + ["--record", rec])
    results["--record onto a device"] = (one_line_error(code, err) and stat.S_ISCHR(os.stat(rec).st_mode), err)

    model = tmp / "model.keras"
    model.write_bytes(b"a model")
    code, _, err = attempt(["export", model, "-o", model, "--force"])
    results["export -o onto its MODEL"] = (one_line_error(code, err) and model.read_bytes() == b"a model", err)
    code, _, err = attempt(["train", tmp, "-o", tmp, "--force"])
    results["train -o onto its DATA_DIR"] = (one_line_error(code, err) and model.read_bytes() == b"a model", err)

    from edgekit import atomic

    dev2 = device("null2")
    atomic.write_json(dev2, {"a": 1})
    results["an atomic write onto a device"] = (stat.S_ISCHR(os.stat(dev2).st_mode), "")
    (tmp / "real.json").write_text("{}")
    os.symlink("real.json", tmp / "link.json")
    atomic.write_json(tmp / "link.json", {"b": 2})
    results["an atomic write onto a symlink"] = (os.path.islink(tmp / "link.json")
                                                 and json.loads((tmp / "real.json").read_text()) == {"b": 2}, "")
    return len(results), sum(_report(f"output paths: {name}", ok, err) for name, (ok, err) in results.items())


# ---- dataset values ------------------------------------------------------------------------------
def _yolo(root: Path, label: str = "0 0.5 0.5 0.2 0.2\n", names: str = "[cat, dog]") -> Path:
    for split in ("train", "val"):
        for stem in ("a", "b"):
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "images" / split / f"{stem}.png"), np.full((48, 64, 3), 90, np.uint8))
            (root / "labels" / split / f"{stem}.txt").write_text(label if stem == "a" else "1 0.5 0.5 0.3 0.3\n")
    (root / "data.yaml").write_text(f"train: images/train\nval: images/val\nnames: {names}\n")
    return root


def _coco(root: Path, edit) -> Path:
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (root / split).mkdir()
        for name in ("x.png", "y.png"):
            cv2.imwrite(str(root / split / name), np.full((48, 64, 3), 90, np.uint8))
        doc = {"images": [{"id": 1, "file_name": "x.png"}, {"id": 2, "file_name": "y.png"}],
               "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 5, 20, 30]},
                               {"id": 2, "image_id": 2, "category_id": 3, "bbox": [0, 0, 30, 30]}],
               "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]}
        text = edit(doc)
        (root / "annotations" / f"instances_{split}.json").write_text(text if isinstance(text, str) else json.dumps(doc))
    return root


def _set(where, key, value):
    def edit(doc):
        doc[where][0][key] = value
    return edit


def dataset_values(bundle: Path, tmp: Path) -> tuple[int, int]:
    from edgekit.data.detection import read_detection_set
    from edgekit.errors import InputError

    yolo = {f"YOLO class id {v}": ({"label": f"{v} 0.5 0.5 0.2 0.2\n"}, "skip") for v in ("nan", "inf", "-inf", "1e400")}
    yolo.update({f"YOLO names {v}": ({"names": v}, "refuse") for v in ("[[a, b], c]", "[a, null]", "null", "[a, a]",
                                                                         "{0: a, 1: [b]}")})
    coco = {
        "COCO image_id a list": (_set("annotations", "image_id", [1]), "skip"),
        "COCO image_id an object": (_set("annotations", "image_id", {"id": 1}), "skip"),
        "COCO category_id a list": (_set("annotations", "category_id", [7]), "skip"),
        "COCO category_id an object": (_set("annotations", "category_id", {"id": 7}), "skip"),
        "COCO images[].id a list": (_set("images", "id", [1]), "refuse"),
        "COCO file_name an int": (_set("images", "file_name", 5), "refuse"),
        "COCO file_name null": (_set("images", "file_name", None), "refuse"),
        "COCO mixed int/str category ids": (_set("categories", "id", "7"), "refuse"),
        "COCO duplicate image ids": (lambda d: d["images"][1].update(id=1), "refuse"),
        "COCO duplicate category ids": (lambda d: d["categories"].append({"id": 7, "name": "bird"}), "refuse"),
        "COCO duplicate category names": (lambda d: d["categories"][1].update(name="dog"), "refuse"),
        "COCO 100k-deep JSON": (lambda d: "[" * 100000 + "]" * 100000, "refuse"),
    }
    clean = 0
    for i, (name, (spec, expect)) in enumerate({**yolo, **coco}.items()):
        root = tmp / f"d{i}"
        root = _yolo(root, **spec) if name.startswith("YOLO") else _coco(root, spec)
        try:
            ds = read_detection_set(root)
            got = "skip" if any(ds.skipped.values()) or ds.boxes("val") < 2 else "accepted"
            detail = f"got {got}"
        except InputError as exc:
            got, detail = "refuse", str(exc)
        except Exception as exc:  # an internal error: never clean
            got, detail = "crash", f"{type(exc).__name__}: {exc}"
        clean += _report(f"dataset values: {name} (expected {expect})", got == expect, detail)
    return len(yolo) + len(coco), clean


# ---- http ----------------------------------------------------------------------------------------
def http(bundle: Path, tmp: Path) -> tuple[int, int]:
    from edgekit.stream.metrics import Metrics
    from edgekit.stream.server import StreamServer

    results = []
    server = StreamServer("127.0.0.1:0", Metrics()).open()
    server.publish(np.zeros((8, 8, 3), np.uint8))
    slow = []
    try:
        for _ in range(70):
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", server.port))
            s.sendall(b"GET /metrics HTTP/1.1\r\n")
            slow.append(s)
        for i in range(20):
            try:
                with urllib.request.urlopen(server.url + "/metrics", timeout=5) as resp:
                    results.append((f"real request {i} while 70 slow clients hold sockets", resp.status == 200))
            except OSError as exc:
                results.append((f"real request {i} while 70 slow clients hold sockets: {exc}", False))
        for path in ("/metrics", "/status.json", "/", "/snapshot.jpg", "/stream.mjpg"):
            try:
                with urllib.request.urlopen(urllib.request.Request(server.url + path, method="HEAD"), timeout=5) as r:
                    results.append((f"HEAD {path}", r.status == 200 and r.read() == b""))
            except OSError as exc:
                results.append((f"HEAD {path}: {exc}", False))
    finally:
        for s in slow:
            s.close()
        server.close()
    server = StreamServer("127.0.0.1:0", Metrics(), max_clients=8, request_deadline=1.0).open()
    try:
        socks = []
        for _ in range(6):
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(b"GET / HTTP/1.1\r\n")
            s.settimeout(10)
            socks.append(s)
        for i, s in enumerate(socks):
            try:
                results.append((f"slow client {i} cut at the request deadline", s.recv(10) == b""))
            except OSError as exc:
                results.append((f"slow client {i} cut at the request deadline: {exc}", False))
            s.close()
    finally:
        server.close()
    return len(results), sum(_report(f"http: {name}", ok) for name, ok in results)


FAMILIES = {"option numbers": option_numbers, "output paths": output_paths, "dataset values": dataset_values,
            "http": http}

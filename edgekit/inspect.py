"""A bundle at a glance: I/O, op histogram per model, target verdict, sizes and hashes.

``inspect_bundle(path)`` returns a JSON-able dict; ``format_summary`` renders it for people. With
``target`` the fp32 graph is re-checked against another JetPack/TensorRT version; with ``nodes`` the
fp32 graph's node names and ops are listed (the names ``--keep-float`` takes).
"""

from __future__ import annotations

import os

from edgekit.atomic import sha256_file
from edgekit.bundle import Bundle, gate_basis
from edgekit.nms import NmsParams

ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "float64"}


def inspect_bundle(path: str | os.PathLike, target: str | None = None, nodes: bool = False) -> dict:
    """Summarise the bundle at ``path`` (hash mismatches are reported, not raised)."""
    import onnx

    from edgekit.graph.support import check, onnx_opset, op_histogram

    bundle = Bundle.load(path, verify=False)
    m = bundle.manifest
    models = {}
    for key, entry in m["models"].items():
        file = bundle.path / entry["path"]
        info = {"path": entry["path"], "present": file.is_file()}
        info.update({k: v for k, v in entry.items() if k not in ("path", "sha256", "tensorrt")})
        if key != "fp32":
            info["verdict"] = bundle.verdict(key)  # None: usable
        models[key] = info
        if file.is_file():
            sha = sha256_file(file)
            info.update(size=file.stat().st_size, sha256=sha, hash_ok=sha == entry.get("sha256", sha))
            try:
                model = onnx.load(str(file), load_external_data=False)
            except Exception as exc:  # protobuf raises DecodeError and others for a damaged file
                info["error"] = f"not a readable ONNX model ({type(exc).__name__})"
                continue
            ops = op_histogram(model)
            info.update(
                opset=onnx_opset(model),
                nodes=sum(ops.values()),
                ops=dict(ops.most_common()),
                inputs=[_io(v) for v in model.graph.input],
                outputs=[_io(v) for v in model.graph.output],
                qdq=ops.get("QuantizeLinear", 0) + ops.get("DequantizeLinear", 0),
            )
            if key == "fp32" and target:
                info["check"] = check(model, target).to_dict()
            if key == "fp32" and nodes:
                info["node_list"] = [{"name": n.name, "op": n.op_type} for n in model.graph.node]
        if isinstance(entry.get("tensorrt"), dict):
            info["tensorrt"] = _plugin_model(bundle.path / entry["tensorrt"]["path"], entry["tensorrt"])
    return {
        "path": str(bundle.path),
        "schema_version": m["schema_version"],
        "task": m["task"],
        **({"nms": NmsParams.from_dict(m["nms"]).to_dict()} if "nms" in m else {}),  # defaults filled in
        **({"nms_cut": m["nms_cut"]} if "nms_cut" in m else {}),
        "labels": m["labels"],
        "input": m["input"],
        "outputs": m["outputs"],
        "preprocess": m["preprocess"],
        "opset": m.get("opset"),
        "target": m.get("target", {}),
        "parity": m.get("parity"),
        "source": m.get("source"),
        "tools": m.get("tools", {}),
        "models": models,
    }


def _plugin_model(file, entry: dict) -> dict:
    """The TensorRT variant of a detection model: presence, hash, plugin nodes and outputs."""
    import onnx

    from edgekit.graph.support import PLUGINS, op_histogram

    info = {"path": entry["path"], "present": file.is_file()}
    if info["present"]:
        info["hash_ok"] = sha256_file(file) == entry.get("sha256")
        try:
            model = onnx.load(str(file), load_external_data=False)
        except Exception as exc:  # protobuf raises DecodeError and others for a damaged file
            info["error"] = f"not a readable ONNX model ({type(exc).__name__})"
            return info
        ops = op_histogram(model)
        info["plugins"] = {op: n for op, n in ops.items() if op in PLUGINS}
        info["outputs"] = [_io(v) for v in model.graph.output]
    return info


def _io(value) -> dict:
    t = value.type.tensor_type
    shape = [d.dim_param or d.dim_value or "?" for d in t.shape.dim]
    return {"name": value.name, "shape": shape, "dtype": ONNX_DTYPES.get(t.elem_type, str(t.elem_type))}


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _verdict_lines(info: dict) -> list[str]:
    """The accuracy verdicts on one model: quantize's gate, validate's run, and what they decide."""
    lines = []
    g, v = info.get("gate"), info.get("validation")
    if isinstance(g, dict) and isinstance(g.get("drop"), (int, float)):
        basis = gate_basis(g.get("metric"), bool(g.get("labelled")))
        lines.append(f"          gate: {basis} drop {g['drop']:.2f} points (max {g.get('max_drop') or 0:g}) "
                     f"on {g.get('images', '?')} held-out images")
    if isinstance(v, dict):
        result = "pass" if v.get("passed") else "FAIL"
        metric = "mAP@0.5" if v.get("metric") == "map50" else "top-1"
        lines.append(f"          validate: {result}, {metric} {v.get('value') or 0:.2f}% vs {v.get('reference') or 0:.2f}% "
                     f"fp32, drop {v.get('drop') or 0:.2f} points (max {v.get('max_drop') or 0:g}) "
                     f"on {v.get('images', '?')} images, {v.get('at', '?')}")
    if info.get("verdict"):
        lines.append(f"          refused by build/bench/run/service: {info['verdict']} (--allow-failed-gate overrides)")
    return lines


def format_summary(s: dict) -> str:
    """The summary as readable text."""
    labels = s["labels"]
    shown = ", ".join(labels[:10]) + (f", … ({len(labels)} in all)" if len(labels) > 10 else "")
    p = s["preprocess"]
    lines = [
        f"bundle    {s['path']} (schema {s['schema_version']}, {s['task']})",
        f"labels    {shown}",
        f"input     {s['input']['name']} {s['input']['shape']} {s['input']['layout']} {s['input']['dtype']}",
        *(f"output    {o['name']} ({o.get('meaning', '?')})" for o in s["outputs"]),
        f"preproc   {p['size'][0]}x{p['size'][1]} {p['resize']} {p['color']} scale={p['scale']:.6g} "
        f"mean={p['mean']} std={p['std']}",
    ]
    if s.get("nms"):
        n = s["nms"]
        lines.append(f"nms       score {n['score_threshold']:g} (run), {n['eval_score_threshold']:g} (eval), "
                     f"iou {n['iou_threshold']:g}, max {n['max_detections']} detections, "
                     f"{'class-agnostic' if n.get('class_agnostic') else 'per class'}"
                     + {"native": "; TensorRT: NonMaxSuppression", "plugin": "; TensorRT: EfficientNMS_TRT"}.get(
                         n.get("tensorrt_nms"), ""))
    if s.get("nms_cut"):
        c = s["nms_cut"]
        lines.append(f"nms cut   TensorFlow NMS {', '.join(c['nms_nodes'])}: removed {sum(c['removed'].values())} nodes")
    t = s["target"]
    if t:
        lines.append(f"target    {t.get('name')} (TensorRT {t.get('tensorrt')}): {t.get('verdict')}")
        lines += [f"          {q['severity']}: {q['op']} {q['node']}: {q['message']}" for q in t.get("problems", [])]
    if s.get("opset"):
        lines.append(f"opset     {s['opset']}")
    if s.get("parity"):
        parity = s["parity"]
        lines.append(f"parity    max abs error {parity['max_abs_error']:.3g} (tolerance {parity['tolerance']:g})")
    if s.get("source"):
        src = s["source"]
        lines.append(f"source    {src.get('path')} ({src.get('format')}) sha256 {str(src.get('sha256', '-'))[:16]}")
    for key, info in s["models"].items():
        if not info["present"]:
            lines.append(f"model     {key}: {info['path']} MISSING")
            continue
        flag = "" if info["hash_ok"] else "  HASH MISMATCH (corrupt or edited)"
        if "error" in info:
            lines.append(f"model     {key}: {info['path']} {_size(info['size'])} {info['error']}{flag}")
            continue
        usable = "" if info.get("usable", True) else "  (not usable)"
        lines.append(f"model     {key}: {info['path']} {_size(info['size'])} opset {info['opset']} "
                     f"{info['nodes']} nodes sha256 {info['sha256'][:16]}{flag}{usable}")
        ios = [f"{v['name']} {v['shape']} {v['dtype']}" for v in (*info["inputs"], *info["outputs"])]
        lines.append(f"          io: {' -> '.join(ios)}")
        lines.append("          ops: " + ", ".join(f"{op} {n}" for op, n in info["ops"].items()))
        lines += _verdict_lines(info)
        if "tensorrt" in info:
            trt = info["tensorrt"]
            state = ("MISSING" if not trt["present"] else trt.get("error")
                     or ("" if trt.get("hash_ok") else "HASH MISMATCH (corrupt or edited)"))
            plugins = ", ".join(trt.get("plugins", {})) or "no plugin"
            outs = ", ".join(v["name"] for v in trt.get("outputs", []))
            lines.append(f"          tensorrt: {trt['path']} (+{plugins}) -> {outs} {state}".rstrip())
        if "node_list" in info:
            kept = set(s["models"].get("int8", {}).get("float_nodes") or ())
            lines.append(f"          nodes (name op; for --keep-float){'; * = float in int8' if kept else ''}:")
            lines += [f"            {n['name']} {n['op']}{' *' if n['name'] in kept else ''}" for n in info["node_list"]]
        if "check" in info:
            c = info["check"]
            lines.append(f"          {c['name']} (TensorRT {c['tensorrt']}): {c['verdict']}")
            lines += [f"            {q['severity']}: {q['op']} {q['node']}: {q['message']}" for q in c["problems"]]
    if s["tools"]:
        lines.append("tools     " + ", ".join(f"{k} {v}" for k, v in s["tools"].items()))
    return "\n".join(lines)

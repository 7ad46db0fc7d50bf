"""Channel-last regions of an NCHW graph rewritten in NCHW, so no Transpose is left around them.

tf2onnx makes the input NCHW and pushes Transposes through convolutions, but not through Keras'
channel-last ``Dense`` on a feature map (ConvNeXt's pointwise layers: a ``Tensordot``, i.e. Reshape to
``[N*H*W, C]``, MatMul, Reshape back): each block keeps ``Transpose(0,2,3,1)`` before it and
``Transpose(0,3,1,2)`` after it (36 in ConvNeXtTiny at 64 px; on 1x1 pixels tf2onnx may make the
first a Reshape to rows). A *region* is everything between such an entry and the Transposes back to
NCHW; when every node in it is one this module understands, it is rewritten in NCHW and the Transposes
go:

- MatMul by a constant ``[Cin, Cout]`` (on ``[N, H, W, C]`` or on the ``[N*H*W, C]`` rows) becomes a
  1x1 Conv with weight ``[Cout, Cin, 1, 1]`` (the bias Add and a per-channel Mul after it, e.g.
  ConvNeXt's LayerScale, fold into it later with fold_batchnorm);
- the Reshapes to rows and back disappear, once their shape (computed from ``Shape`` nodes) is proven
  to be ``[-1, C]`` and ``[N, H, W, C]`` of the region's own tensors;
- elementwise ops keep their op; a constant operand of rank >= 1 is padded to rank 4 and transposed
  (a per-channel ``[C]`` becomes ``[1, C, 1, 1]``); scalars stay;
- a ReduceMean/ReduceSum over the channel axis with ``keepdims`` reduces over axis 1.

That last item is how a channel-last LayerNormalization lives here: Keras' ``LayerNormalization`` reaches
ONNX as its moments (ReduceMean, Sub, Mul, ReduceMean, Add, Sqrt, Reciprocal, Mul, Add), never as the
``LayerNormalization`` op, and over the channel axis of NCHW it stays so. TensorRT 8.6+ builds an
``INormalizationLayer`` from the ONNX op only over trailing axes (``axis`` to the last), which the
channel axis of NCHW is not, so emitting the op would need the Transposes back (and TensorRT 8.5 has
no such op at all); the moments run as TensorRT reduce and elementwise layers, as they did before
(not timed on a GPU here).

Anything else in a region (another op, a region tensor that is a graph output, a shape computed in a way
not proven) leaves the whole region as it was. Numerics: the same sums of products, in another order.
"""

from __future__ import annotations

import numpy as np

TO_NHWC, TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]
UNARY = {"Abs", "Elu", "Erf", "Exp", "Gelu", "HardSigmoid", "HardSwish", "Identity", "LeakyRelu", "Log", "Neg",
         "Reciprocal", "Relu", "Sigmoid", "Softplus", "Sqrt", "Tanh"}
BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"}
CHANNEL_REDUCE = {"ReduceMean", "ReduceSum"}
NHWC, ROWS = 4, 2  # a region tensor's rank: [N, H, W, C], or its pixels as rows [N*H*W, C]


def channels_first(graph) -> int:
    """Rewrite every understood channel-last region of ``graph`` (an onnx-graphsurgeon Graph) in NCHW;
    the number of Transposes removed."""
    graph.toposort()
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    removed, tried, consts = 0, set(), {}
    for node in list(graph.nodes):
        if id(node) in tried or not (_is_transpose(node, TO_NHWC) or _is_pixel_rows(node)):
            continue
        region = _Region(graph, node, order, consts)
        tried.update(region.entries)
        if region.understood():
            region.rewrite()  # its old nodes stay until the cleanup below: none may start a region
            tried.update(id(n) for n in (*region.nodes, *region.exits))
            removed += len(region.exits) + sum(e.op == "Transpose" for e in region.entry_nodes)
    graph.cleanup()
    return removed


def _gs():
    import onnx_graphsurgeon as gs

    return gs


def _is_transpose(node, perm) -> bool:
    return node.op == "Transpose" and list(node.attrs.get("perm", [])) == perm


def _is_pixel_rows(node) -> bool:
    """A Reshape of an NCHW tensor of 1x1 pixels: its rows are the channel-last pixels, as after a Transpose
    (where tf2onnx's transpose optimizer turned the Transpose into this Reshape)."""
    shape = node.inputs[0].shape if node.op == "Reshape" else None
    return bool(shape) and len(shape) == 4 and isinstance(shape[1], int) and list(shape[2:]) == [1, 1]


def _const(tensor):
    return tensor.values if isinstance(tensor, _gs().Constant) else None


class _Region:
    """The nodes between an entry (Transpose to NHWC, or rows of 1x1 NCHW pixels) and the Transposes back
to NCHW (exits), with each tensor's (rank, channels)."""

    def __init__(self, graph, entry, order, consts):
        self.graph, self.order, self.consts = graph, order, consts
        self.entries, self.exits, self.nodes = {id(entry)}, [], []  # entries by node id
        self.entry_nodes = [entry]
        self.spec = {}  # tensor name -> (NHWC or ROWS, channels)
        self.dims = ("N", "H", "W")  # the region's N, H, W: ints where the entries' shapes say so
        self.error = self._collect(entry)

    # ---- which nodes, and are they understood ------------------------------------------------------
    def _collect(self, entry) -> str | None:
        seen, todo, entries = {id(entry)}, [entry], self.entry_nodes
        while todo:
            node = todo.pop()
            self.nodes.append(node)
            for out in node.outputs:
                if out in self.graph.outputs:
                    return f"{out.name} is a graph output"
                for user in out.outputs:
                    if id(user) in seen or user.op == "Shape":
                        continue
                    seen.add(id(user))
                    if _is_transpose(user, TO_NCHW):
                        if user.outputs[0] in self.graph.outputs:
                            return f"{user.outputs[0].name} is a graph output"
                        self.exits.append(user)
                    else:
                        todo.append(user)
            for tensor in node.inputs[:1] if node.op == "Reshape" else node.inputs:
                producer = tensor.inputs[0] if tensor.inputs else None
                if producer is not None and id(producer) not in seen and _is_transpose(producer, TO_NHWC):
                    seen.add(id(producer))
                    self.entries.add(id(producer))
                    entries.append(producer)
                    todo.append(producer)
        self.nodes.sort(key=lambda n: self.order[id(n)])
        shapes = {tuple(e.inputs[0].shape or ()) for e in entries}
        shape = shapes.pop() if len(shapes) == 1 else ()
        if len(shape) != 4 or not isinstance(shape[1], int):
            return "entries of unknown or different shapes"  # N, H, W would not be one
        self.dims = tuple(d if isinstance(d, int) else s for d, s in zip((shape[0], *shape[2:]), "NHW"))
        return None if self.exits else "no Transpose back to NCHW"

    def understood(self) -> bool:
        if self.error is not None:
            return False
        for node in self.nodes:
            spec = self._spec(node)
            if spec is None:
                return False
            self.spec[node.outputs[0].name] = spec
        if any((self._in(node.inputs[0]) or (0,))[0] != NHWC for node in self.exits):
            return False
        return self._shapes_only_feed_reshapes()

    def _in(self, tensor):
        return self.spec.get(tensor.name)

    def _spec(self, node):
        """(rank, channels) of ``node``'s one output, or None when the node is not understood."""
        if len(node.outputs) != 1 or node.domain not in ("", None, "ai.onnx"):
            return None
        if id(node) in self.entries and node.op == "Transpose":
            return NHWC, node.inputs[0].shape[1]
        ins = [self._in(t) for t in node.inputs]
        if node.op == "Reshape":
            return self._reshape(node, ins[0])
        if node.op == "MatMul":
            w = _const(node.inputs[1])
            ok = ins[0] is not None and w is not None and w.ndim == 2 and w.shape[0] == ins[0][1]
            return (ins[0][0], w.shape[1]) if ok else None
        if node.op in UNARY:
            return ins[0] if ins[0] is not None and len(node.inputs) == 1 else None
        if node.op in BROADCAST:
            return self._broadcast(node, ins)
        if node.op in CHANNEL_REDUCE:
            return self._reduce(node, ins[0])
        return None

    def _reshape(self, node, spec):
        if id(node) in self.entries:  # the rows of 1x1 NCHW pixels
            spec = ("NCHW", node.inputs[0].shape[1])
        if spec is None:
            return None
        target = _symbolic(node.inputs[1], self)
        rank, ch = spec
        if target is None or len(target) not in (ROWS, NHWC) or node.attrs.get("allowzero", 0):
            return None
        if len(target) == ROWS and target[1] == ch and (rank != ROWS or target[0] in (-1, self.pixels)):
            return (ROWS, ch)
        if len(target) == NHWC and target[3] == ch and rank == ROWS and sum(t == -1 for t in target[:3]) <= 1 \
                and all(t in (-1, d) for t, d in zip(target[:3], self.dims)):
            return (NHWC, ch)
        return None

    @property
    def pixels(self):
        """N*H*W: an int, or "NHW" when any of them is unknown."""
        return "NHW" if any(isinstance(d, str) for d in self.dims) else int(np.prod(self.dims))

    def _broadcast(self, node, ins):
        rank = {s[0] for s in ins if s is not None}
        if len(rank) != 1:
            return None  # no region input, or rows meeting [N, H, W, C]
        rank = rank.pop()
        channels = {s[1] for s in ins if s is not None}
        for tensor, spec in zip(node.inputs, ins):
            value = _const(tensor)
            if spec is not None:
                continue
            if value is None or value.ndim > rank or rank == ROWS and value.ndim == 2 and value.shape[0] != 1:
                return None
            channels.add(value.shape[-1] if value.ndim else 1)
        channels.discard(1)
        return (rank, channels.pop() if channels else 1) if len(channels) <= 1 else None

    def _reduce(self, node, spec):
        if spec is None or not node.attrs.get("keepdims", 1) or node.attrs.get("noop_with_empty_axes", 0):
            return None
        axes = node.attrs.get("axes") if len(node.inputs) < 2 else _const(node.inputs[1])
        if axes is None or [int(a) % spec[0] for a in np.ravel(axes)] != [spec[0] - 1]:
            return None
        return (spec[0], 1)

    def _shapes_only_feed_reshapes(self) -> bool:
        """Every node reading a region tensor's shape leads only to the shape input of a region Reshape,
        so nothing of the old region outlives the rewrite."""
        region = {id(n) for n in (*self.nodes, *self.exits)}
        todo = [u for n in self.nodes for u in n.outputs[0].outputs if u.op == "Shape"]
        seen = set()
        while todo:
            node = todo.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            for out in node.outputs:
                if out in self.graph.outputs:
                    return False
                for user in out.outputs:
                    if id(user) in region:
                        if user.op != "Reshape" or user.inputs[1] is not out:
                            return False
                    else:
                        todo.append(user)
        return True

    # ---- the rewrite -----------------------------------------------------------------------------
    def rewrite(self) -> None:
        gs = _gs()
        nchw = {}  # old tensor name -> its NCHW tensor
        for node in self.nodes:
            out = node.outputs[0]
            if id(node) in self.entries:
                nchw[out.name] = node.inputs[0]
                continue
            if node.op == "Reshape":
                nchw[out.name] = nchw[node.inputs[0].name]
                continue
            new = gs.Variable(f"{out.name}_nchw", dtype=out.dtype)
            nchw[out.name] = new
            x = nchw.get(node.inputs[0].name)
            if node.op == "MatMul":
                w = _const(node.inputs[1])  # [Cin, Cout]
                inputs = [x, gs.Constant(f"{out.name}_weight", np.ascontiguousarray(w.T[:, :, None, None]))]
                self.graph.nodes.append(gs.Node("Conv", new.name, inputs=inputs, outputs=[new]))
            elif node.op in CHANNEL_REDUCE:
                attrs, inputs = dict(node.attrs), [x]
                if len(node.inputs) > 1:
                    inputs.append(gs.Constant(f"{out.name}_axes", np.array([1], np.int64)))
                else:
                    attrs["axes"] = [1]
                self.graph.nodes.append(gs.Node(node.op, new.name, attrs, inputs, [new]))
            else:
                rank = self.spec[out.name][0]
                inputs = [nchw[t.name] if t.name in nchw else self._const_nchw(t, rank) for t in node.inputs]
                self.graph.nodes.append(gs.Node(node.op, new.name, dict(node.attrs), inputs, [new]))
        for node in self.exits:
            for user in list(node.outputs[0].outputs):
                for i, tensor in enumerate(user.inputs):
                    if tensor is node.outputs[0]:
                        user.inputs[i] = nchw[node.inputs[0].name]
            node.outputs.clear()

    def _const_nchw(self, tensor, rank):
        """A constant operand of an NHWC (or rows) tensor, as one of the NCHW tensor; scalars as they are."""
        value = _const(tensor)
        if value.size == 1:
            return tensor
        if id(tensor) not in self.consts:
            shaped = value.reshape((1,) * (4 - value.ndim) + value.shape).transpose(TO_NCHW) if rank == NHWC \
                else value.reshape(1, value.shape[-1], 1, 1)
            self.consts[id(tensor)] = _gs().Constant(f"{tensor.name}_nchw", np.ascontiguousarray(shaped))
        return self.consts[id(tensor)]


# ---- shapes, computed symbolically ------------------------------------------------------------------
SHAPE_OPS = {"Shape", "Cast", "Gather", "Concat", "Unsqueeze", "Squeeze", "ReduceProd", "Slice"}


def _symbolic(tensor, region, depth: int = 0):
    """The value of a 1-D int tensor (a Reshape's shape) as a list of ints and the region's N, H, W (and
    N*H*W) where unknown, or None when it is not computed from the region's shapes by shape arithmetic."""
    value = _const(tensor)
    if value is not None:
        return np.ravel(value).astype(int).tolist() if value.dtype.kind in "iu" and value.ndim <= 1 else None
    node = tensor.inputs[0] if tensor.inputs else None
    if node is None or node.op not in SHAPE_OPS or depth > 16:
        return None
    if node.op == "Shape":
        return _shape(node, region)
    args = [_symbolic(t, region, depth + 1) for t in node.inputs]
    if any(a is None for a in args):
        return None
    if node.op in ("Cast", "Squeeze", "Unsqueeze"):  # on a 1-element list: a scalar and [scalar] alike
        return args[0] if node.op == "Cast" or len(args[0]) == 1 else None
    if node.op == "Concat":
        return [v for a in args for v in a] if node.attrs.get("axis", 0) == 0 else None
    if node.op == "Gather":
        n = len(args[0])
        ok = node.attrs.get("axis", 0) == 0 and all(-n <= i < n for i in args[1])
        return [args[0][i] for i in args[1]] if ok else None
    if node.op == "ReduceProd":
        return _product(args[0], region)
    if node.op == "Slice":
        starts, ends = args[1], args[2]
        axes, steps = (args[3] if len(args) > 3 else [0]), (args[4] if len(args) > 4 else [1])
        ok = len(starts) == len(ends) == 1 and axes in ([0], [-1]) and steps == [1]
        return args[0][starts[0]:ends[0]] if ok else None
    return None


def _shape(node, region):
    """A Shape node's value: the region's tensors and its entries' NCHW inputs have symbolic shapes."""
    tensor = node.inputs[0]
    spec = region.spec.get(tensor.name)
    n, h, w = region.dims
    if spec is not None:
        full = [n, h, w, spec[1]] if spec[0] == NHWC else [region.pixels, spec[1]]
    elif any(id(user) in region.entries for user in tensor.outputs):
        full = [n, tensor.shape[1], h, w]
    else:
        return None
    return full[node.attrs.get("start", 0):node.attrs.get("end", len(full))]


def _product(values, region):
    """ReduceProd of a symbolic list: an int, the region's N*H*W, else None."""
    if all(isinstance(v, int) for v in values):
        return [int(np.prod(values))]
    if sorted(map(str, values)) == sorted(map(str, region.dims)):
        return [region.pixels]
    return None

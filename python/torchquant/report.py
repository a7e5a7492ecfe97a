"""Per-layer error of a quantized model against its float original.

Forward hooks record each layer's output in both models on the same inputs, matched by module
name; quantized outputs (torchquant's QTensor or torch's quantized tensors) are dequantized
first. For each layer the report gives the SQNR, ``10·log10(Σ float² / Σ (float − quant)²)`` in dB
(higher is better; every bit of precision is worth about 6 dB), and the largest absolute error.

Example::

    >>> r = torchquant.report(float_model, int8_model, x_test[:1024])
    >>> print(r)
    layer    float module  quantized module   SQNR (dB)  max |err|
    quant    QuantStub     Quantize               41.2     0.0149
    ...
    >>> fig = r.plot("sqnr.png")   # bar chart, saved and returned
"""
import functools
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Iterable, List, Optional, Union

import torch
import torch.nn as nn
import torch.utils._pytree as pytree

from .calibrate import _batch_error, _call, _check_batch

__all__ = ["report", "QuantReport", "LayerError"]


@dataclass(frozen=True)
class LayerError:
    """One layer's error: SQNR in dB (``inf`` when identical) and the largest absolute difference."""

    name: str
    float_type: str
    quantized_type: str
    sqnr_db: float
    max_abs_error: float
    numel: int
    # Bytes of each module's state dict (weights, qparams, buffers): what quantization saves.
    float_bytes: int = 0
    quantized_bytes: int = 0


class QuantReport:
    """Rows of :class:`LayerError`, printable as a table; ``plot()`` draws a bar chart of SQNR."""

    def __init__(self, layers: List[LayerError], show_size: bool = False):
        self.layers = layers
        self.figure = None
        self.show_size = show_size

    def __iter__(self):
        return iter(self.layers)

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, name: str) -> LayerError:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer named {name!r} in the report (layers: {[l.name for l in self.layers]})")

    def table(self) -> str:
        head = ("layer", "float module", "quantized module", "SQNR (dB)", "max |err|")
        # (-inf: a float output of zeros against a quantized one that is not, the worst there is)
        rows = [(l.name, l.float_type, l.quantized_type,
                 f"{l.sqnr_db:.1f}" if math.isfinite(l.sqnr_db) else str(l.sqnr_db), f"{l.max_abs_error:.4g}")
                for l in self.layers]
        align = ["<", "<", "<", ">", ">"]
        if self.show_size:
            head += ("float KiB", "quant KiB", "smaller")
            rows = [r + (f"{l.float_bytes / 1024:.1f}", f"{l.quantized_bytes / 1024:.1f}",
                         # (no ratio where one side holds no state: a FloatFunctional's row)
                         f"{l.float_bytes / l.quantized_bytes:.2f}x" if l.quantized_bytes and l.float_bytes
                         else "-")
                    for r, l in zip(rows, self.layers)]
            align += [">", ">", ">"]
        widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
        fmt = "  ".join(f"{{:{a}{w}}}" for a, w in zip(align, widths))
        return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])

    def __str__(self) -> str:
        return self.table()

    __repr__ = __str__

    def plot(self, path: Optional[str] = None, title: str = "Per-layer SQNR"):
        """Bar chart of SQNR per layer (max |err| annotated on each bar); saved to ``path`` when
        given. Returns the matplotlib Figure."""
        import matplotlib.pyplot as plt

        names = [l.name for l in self.layers]
        # An exact layer (SQNR +inf) is drawn at the top of the others so the chart stays readable;
        # one with SQNR -inf (a float output of zeros, a quantized one that is not) or NaN (non-finite
        # outputs) at the bottom, below 0 dB, in red, labelled with its max |err| as the finite ones.
        finite = [l.sqnr_db for l in self.layers if math.isfinite(l.sqnr_db)]
        cap = (max(finite) if finite else 0.0) + 10.0
        floor = min(finite + [0.0]) - 10.0
        values = [l.sqnr_db if math.isfinite(l.sqnr_db) else cap if l.sqnr_db == math.inf else floor
                  for l in self.layers]
        fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 2), 3.5))
        colors = ["tab:blue" if l.sqnr_db > -math.inf else "tab:red" for l in self.layers]  # (NaN > x: False)
        bars = ax.bar(names, values, color=colors)
        for bar, l in zip(bars, self.layers):
            label = "exact" if l.sqnr_db == math.inf else f"{l.max_abs_error:.2g}"
            if not math.isfinite(l.sqnr_db) and l.sqnr_db != math.inf:
                label += f" ({l.sqnr_db} dB)"  # -inf / nan: the bar's height is no value
            y = bar.get_y() + bar.get_height()
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, y),
                        ha="center", va="bottom" if y >= 0 else "top", fontsize=8)
        ax.set_ylabel("SQNR (dB), higher is better")
        ax.set_title(f"{title} (labels: max |err|)")
        ax.tick_params(axis="x", labelrotation=30)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=100)
        self.figure = fig
        return fig


def _as_float(out) -> Optional[torch.Tensor]:
    # A recurrent module returns (output, state): its output is compared (a PackedSequence's data).
    if isinstance(out, nn.utils.rnn.PackedSequence):
        return _as_float(out.data)
    if isinstance(out, tuple) and out and not hasattr(out, "int_repr"):
        return _as_float(out[0])
    if isinstance(out, torch.Tensor):
        # A copy: the next module may work in place on it (torchvision's ReLU(inplace=True) after a
        # BatchNorm would otherwise turn the BatchNorm's recorded float output into the ReLU's).
        return out.dequantize() if out.is_quantized else out.detach().clone()
    if hasattr(out, "dequantize") and hasattr(out, "int_repr"):  # torchquant.QTensor
        return out.dequantize()
    return None


def _batches(data) -> Iterable:
    # A tuple is one (inputs, targets) batch, as calibrate's batches are (a PackedSequence one
    # batch of one input); a list or any other iterable holds batches.
    if isinstance(data, (torch.Tensor, Mapping, tuple)):
        return [data]
    if isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
        raise TypeError("report: argument 'data' must be a batch (a tensor, an (inputs, targets) tuple, a dict of "
                        "keyword arguments) or an iterable of batches, got " + type(data).__name__)
    return data


def _copied(batch):
    """The batch with its tensors cloned (a mapping, such as a tokenizer's output, as a dict)."""
    return pytree.tree_map_only(torch.Tensor, torch.clone, dict(batch) if isinstance(batch, Mapping) else batch)


def _matched_layers(float_model: nn.Module, quantized_model: nn.Module):
    """The innermost modules present under the same name in both models: ``fc1`` is compared
    even when the quantized one has an internal child (packed weights) and the fused float one
    has children ``fc1.0``/``fc1.1``; a block whose layers are matched is not repeated."""
    # (a MultiheadAttention's children are its parameters' holders, never called as modules: the
    # attention is compared as a whole)
    inside_attention = {f"{n}.{c}" if n else c for n, m in float_model.named_modules()
                        if isinstance(m, nn.MultiheadAttention) for c, _ in m.named_modules() if c}
    float_names = {n for n, _ in float_model.named_modules() if n and n not in inside_attention}
    common = [(n, m) for n, m in quantized_model.named_modules() if n in float_names]
    if not common and type(quantized_model) is not type(float_model) and not any(
            n not in inside_attention for n, _ in float_model.named_children()):
        # the model itself converted (quantize_dynamic(nn.Linear(...), {nn.Linear}), a bare
        # MultiheadAttention, whose out_proj child is part of it): compared as one layer
        return [("", quantized_model)]
    names = {n for n, _ in common}
    return [(n, m) for n, m in common
            if not any(c.startswith(n + ".") for c in names) and not isinstance(m, nn.Identity)]


# FloatFunctional's and QFunctional's methods (torchquant's and torch.ao's)
_FUNCTIONAL_METHODS = ("add", "add_scalar", "mul", "mul_scalar", "cat", "add_relu", "matmul")
_MISSING = object()


def _functional_types() -> tuple:
    """The modules whose computation is in methods, not in forward: torchquant's FloatFunctional
    and QFunctional, and torch.ao's (torchvision's quantizable models hold them)."""
    from .nn.quantized_ops import FLOAT_FUNCTIONAL_TYPES, QFunctional

    types = list(FLOAT_FUNCTIONAL_TYPES) + [QFunctional]
    try:
        from torch.ao.nn.quantized import FXFloatFunctional, QFunctional as AoQFunctional
        types += [FXFloatFunctional, AoQFunctional]
    except ImportError:  # a torch without torch.ao
        pass
    return tuple(types)


def _state_bytes(m: nn.Module) -> int:
    # Every tensor in the state dict's values: torch.ao's quantized Linear keeps its weight and
    # bias as a tuple (``_packed_params._packed_params``); a quantized tensor's element is a byte.
    return sum(t.numel() * t.element_size() for t in pytree.tree_leaves(list(m.state_dict().values()))
               if isinstance(t, torch.Tensor))


def _sqnr(signal: float, noise: float) -> float:
    """``10·log10(signal / noise)`` in dB: +inf for no noise, -inf for no signal or infinite
    noise (an inf in the quantized output), NaN where either is NaN."""
    if math.isnan(signal) or math.isnan(noise):
        return math.nan
    if noise == 0.0:
        return math.inf
    ratio = signal / noise
    return 10.0 * math.log10(ratio) if ratio > 0.0 else -math.inf


def report(float_model: nn.Module, quantized_model: nn.Module, data, plot: Union[bool, str, os.PathLike] = False,
           show_size: bool = False) -> QuantReport:
    """Per-layer SQNR (dB) and max abs error of ``quantized_model`` against ``float_model``.

    Layers are matched by name: the innermost modules that both models have under the same name
    (an ``nn.Identity`` left by fusion is skipped: its row would repeat the fused layer's). Compare a fused model with a float model fused the same way, so that
    ``fc1`` means Linear+ReLU on both sides. Each module's own output is compared (convert's
    FusedReLUSequential runs a Linear / Conv and the ReLU after it as one call, but each is its
    own row); in a model converted by an earlier version, whose Linear / Conv became a
    LinearReLU / ConvReLU with an Identity after it, that row is compared after the float
    model's ReLU (its float type reads ``Linear+ReLU``). A module called several times
    per forward is compared on every call. A ``FloatFunctional`` (whose ``add`` / ``cat`` / ``mul``
    ... are methods, which no forward hook sees) is compared with its ``QFunctional`` on every
    method call: its methods are wrapped on the instance while report runs. A prepared
    (observed) or QAT model given as ``float_model`` or ``quantized_model`` is left as it was:
    its observers' statistics are restored afterwards. A MultiheadAttention is one row (its
    projections are not called as modules); a model that is itself one converted layer is compared as one row. The output of a
    LayerNorm or Linear that AWQ (``quantize_weight_only``) folded its consumers' scales into
    (divided by them) is compared multiplied back: the exact fold shows no error. A weight shared by several modules (a tied
    embedding and LM head) is counted in each of their byte sizes, and torch.ao's packed weights
    (``_packed_params``) are counted as the int8 tensors they hold. The two models are two
    objects (a model converted in place is no longer the float one: a ``ValueError``); a
    submodule object held by both is compared on each model's own output. A NaN in an output
    makes its row's SQNR and max |err| NaN; an inf in the quantized output where the float one is
    finite gives ``-inf`` dB.

    ``data``: a batch of inputs, or an iterable of batches (a list, a DataLoader). A tuple is
    one ``(inputs, targets)`` batch, whether given as ``data`` or as one of its batches, and
    uses its inputs; a mapping, such as a Hugging Face tokenizer's output, is passed as keyword arguments). Statistics accumulate over all batches. Both models run in eval mode under
    ``torch.no_grad()`` on the inputs' device; their training flags are restored afterwards.
    ``plot``: ``True`` draws the bar chart (``report.figure``), a path also saves it there.
    Each row also holds the bytes of both modules' state dicts (``float_bytes``,
    ``quantized_bytes``); ``show_size=True`` prints them as columns of the table.

    >>> r = torchquant.report(fused_float, int8_model, x_test[:1024])
    >>> r["fc1"].sqnr_db > 30
    True
    """
    for arg, model in (("float_model", float_model), ("quantized_model", quantized_model)):
        if not isinstance(model, nn.Module):
            raise TypeError(f"report: argument '{arg}' must be an nn.Module, got {type(model).__name__}")
    batches = _batches(data)
    if isinstance(batches, list) and not batches:
        raise ValueError("report: argument 'data' holds no batches")
    if float_model is quantized_model:
        # (each layer compared with itself: every row would read exact)
        raise ValueError(f"report: arguments 'float_model' and 'quantized_model' are the same "
                         f"{type(float_model).__name__} object: a model converted in place (inplace=True) is no "
                         "longer the float model; convert a copy (copy.deepcopy) and compare the two")

    def quantized(model):
        return [n for n, m in model.named_modules() if type(m).__module__.startswith("torchquant.nn.quantized")]

    q_float, q_quant = quantized(float_model), quantized(quantized_model)
    if q_float and not q_quant:
        raise ValueError(f"argument 'float_model' holds torchquant's quantized modules ({q_float[:3]}) and "
                         "'quantized_model' none: the two look swapped; the signature is "
                         "report(float_model, quantized_model, data)")
    float_modules = dict(float_model.named_modules())
    pairs = _matched_layers(float_model, quantized_model)
    if not pairs:
        raise ValueError(
            "argument 'quantized_model' shares no module name with 'float_model': nothing to compare "
            f"(quantized model's modules: {[n for n, _ in quantized_model.named_modules() if n]})"
        )
    stats = {n: [0.0, 0.0, 0.0, 0] for n, _ in pairs}  # signal energy, noise energy, max |err|, numel
    captured = {"float": {}, "quant": {}}
    # The model running now ("float" / "quant"): a module object in both models (a submodule
    # shared between them) carries both sides' hooks, and only the running side's records.
    running = {"side": None}
    handles = []

    # An unfused float Linear / Conv followed by a ReLU whose int8 module an earlier version's
    # convert folded the ReLU into (LinearReLU, ConvReLU in an nn.Sequential, the ReLU an
    # Identity: a model pickled then): compared after the ReLU on both sides.
    from .nn import qat
    from .quantize import _RELU_FOLDS

    folds = set(_RELU_FOLDS.values())
    plain = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    # (QAT's fused LinearReLU / ConvReLU / ConvBnReLU subclass nn.Linear / nn.Conv*d: their
    # output already has the ReLU)
    with_relu = (qat.LinearReLU, qat.ConvReLU1d, qat.ConvReLU2d, qat.ConvReLU3d, qat.ConvBnReLU1d, qat.ConvBnReLU2d,
                 qat.ConvBnReLU3d)
    relu_after = {n for n, m in pairs if type(m) in folds and isinstance(float_modules[n], plain)
                  and not isinstance(float_modules[n], with_relu)}

    # A LayerNorm or Linear that AWQ folded its consumers' scales s into outputs its float
    # values / s (exact: the consumers' weights hold W * s): its output times s is compared, so
    # that its row (and a consumer's that is itself such a producer) shows its own error only.
    from .weight_only import _FOLD_ATTR

    def hook(side, name):
        def fn(module, args, out):
            if running["side"] != side:
                return
            out = _as_float(out)
            fold = module.__dict__.get(_FOLD_ATTR)
            if out is not None and isinstance(fold, torch.Tensor) and out.shape[-1:] == fold.shape:
                out = out.double() * fold.to(out.device, torch.float64)
            if out is not None and side == "float" and name in relu_after:
                out = torch.relu(out)
            # every call of the module (a block applied several times, a shared layer)
            captured[side].setdefault(name, []).append(out)
        return fn

    # A FloatFunctional / QFunctional computes in its methods (add, cat, mul, ...), which are no
    # forward calls: no forward hook fires. Each method is wrapped on the instance instead (an
    # attribute that shadows the class's, for the duration of report), its output recorded as a
    # hook's; the instance's attributes are restored afterwards.
    wrapped = []
    functionals = _functional_types()

    def record_methods(module, fn):
        for meth in _FUNCTIONAL_METHODS:
            if not callable(getattr(type(module), meth, None)):
                continue
            bound = getattr(module, meth)

            def call(*args, _bound=bound, **kwargs):
                out = _bound(*args, **kwargs)
                fn(module, args, out)
                return out

            wrapped.append((module, meth, module.__dict__.get(meth, _MISSING)))
            module.__dict__[meth] = functools.wraps(bound)(call)

    for n, m in pairs:
        for side, mod in (("float", float_modules[n]), ("quant", m)):
            if isinstance(mod, functionals):
                record_methods(mod, hook(side, n))
            else:
                handles.append(mod.register_forward_hook(hook(side, n)))
    # every module's own flag (a model fine-tuned with frozen BatchNorms, observers in training mode)
    modes = [(m, m.training) for model in (float_model, quantized_model) for m in model.modules()]
    # A prepared or QAT model given as float_model: its observers' statistics (and a learnable
    # fake-quant's qparams) as they were before, restored afterwards, so that report does not
    # change the calibration a later convert uses.
    from .quantize import _is_observer

    # (either model: a prepared or QAT model given as quantized_model is left as it was too)
    every = list({id(m): m for model in (float_model, quantized_model) for m in model.modules()}.values())
    kept = [(m, {k: None if v is None else v.detach().clone() for k, v in m._buffers.items()},
             {k: v.detach().clone() for k, v in m._parameters.items() if v is not None})
            for m in every if _is_observer(m)]
    # (a RecordingObserver's recorded tensors: a list attribute, no buffer)
    recorded = [(m, list(m.__dict__["tensor_val"])) for m in every
                if _is_observer(m) and isinstance(m.__dict__.get("tensor_val"), list)]
    # (and the float-input ranges prepare records for the future int8 Linear / Conv layers)
    ranges = [(m, tuple(t.detach().clone() for t in m.__dict__["_tq_input_range"]))
              for m in every if isinstance(m.__dict__.get("_tq_input_range"), tuple)]
    float_model.eval()
    quantized_model.eval()
    # torch's attention fast path off while the models run: under no_grad an nn.TransformerEncoder
    # given a padding mask turns its input into a NestedTensor before looking at hooks, and its
    # layers (declining the fast path for the hooks) then hand them nested outputs, which have no
    # shape to compare (the int8 model, whose layers decline it too, ran padded)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            seen = 0
            compared = 0  # layer outputs compared (of any size)
            shapes = None  # the first batch's tensor shapes, to name an empty one
            for batch in batches:
                _check_batch("report", seen, batch)
                seen += 1
                if shapes is None:
                    shapes = [tuple(t.shape) for t in pytree.tree_leaves(dict(batch) if isinstance(batch, Mapping)
                                                                         else batch) if isinstance(t, torch.Tensor)]
                captured["float"].clear()
                captured["quant"].clear()
                # Each model gets its own copy of the batch: one that changes its input in place
                # (float preprocessing) would otherwise hand the other a changed batch, and change
                # the caller's data.
                for side, model in (("float", float_model), ("quant", quantized_model)):
                    running["side"] = side
                    try:
                        _call(model, _copied(batch))
                    except TypeError as e:  # (a batch that does not fit forward: how batches are read)
                        err = _batch_error("report", model, batch, e)
                        if err is None:
                            raise
                        raise err from e
                    finally:
                        running["side"] = None
                for n, _ in pairs:
                    for f, q in zip(captured["float"].get(n, ()), captured["quant"].get(n, ())):
                        if f is None or q is None or f.shape != q.shape:
                            continue
                        compared += 1
                        f64, q64 = f.double(), q.double().to(f.device)
                        s = stats[n]
                        s[0] += float((f64 * f64).sum())
                        s[1] += float(((f64 - q64) ** 2).sum())
                        if f.numel():
                            peak = float((f64 - q64).abs().max())
                            # (a NaN stays: Python's max(x, nan) is x)
                            s[2] = peak if math.isnan(peak) or peak > s[2] else s[2]
                        s[3] += f.numel()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for h in handles:
            h.remove()
        for m, meth, before in reversed(wrapped):
            if before is _MISSING:
                m.__dict__.pop(meth, None)
            else:
                m.__dict__[meth] = before
        with torch.no_grad():
            for m, bufs, params in kept:
                for k, v in bufs.items():
                    now = m._buffers.get(k)
                    if isinstance(now, torch.Tensor) and v is not None and now.shape == v.shape and now.dtype == v.dtype:
                        now.copy_(v)  # in place: the caller's references to the buffer stay valid
                    else:  # resized by the forward (a per-channel observer's first statistics)
                        m._buffers[k] = v
                for k, v in params.items():
                    m._parameters[k].copy_(v)
            for m, values in recorded:
                now = m.__dict__.get("tensor_val")
                if isinstance(now, list):
                    now[:] = values  # in place: the caller's reference to the list stays valid
                else:
                    m.__dict__["tensor_val"] = values
            for m, (lo, hi) in ranges:
                now = m.__dict__.get("_tq_input_range")
                if (isinstance(now, tuple) and now[0].shape == lo.shape and now[0].device == lo.device
                        and not now[0].is_inference()):
                    now[0].copy_(lo)  # in place: a compiled calibration keeps its references
                    now[1].copy_(hi)
                else:
                    m.__dict__["_tq_input_range"] = (lo, hi)
        for m, training in modes:
            m.training = training
    if seen == 0:
        raise ValueError("report: argument 'data' holds no batches")
    if compared and not any(stats[n][3] for n, _ in pairs):
        # (every output compared was empty: a batch of 0 rows would give a report of no rows)
        raise ValueError(f"report: argument 'data' held no samples (its first batch's tensors have shapes "
                         f"{shapes}): every layer's output was empty")

    layers = []
    for n, m in pairs:
        signal, noise, max_err, numel = stats[n]
        if numel == 0:
            continue  # the layer never ran or its outputs were not comparable tensors
        sqnr = _sqnr(signal, noise)
        ftype = type(float_modules[n]).__name__ + ("+ReLU" if n in relu_after else "")
        layers.append(LayerError(n, ftype, type(m).__name__, sqnr, max_err, numel,
                                 _state_bytes(float_modules[n]), _state_bytes(m)))
    result = QuantReport(layers, show_size)
    if plot:
        result.plot(None if plot is True else os.fspath(plot))
    return result

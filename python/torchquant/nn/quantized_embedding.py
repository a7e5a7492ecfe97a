"""Weight-only quantized Embedding and EmbeddingBag (torch.ao's ``nn.quantized.Embedding`` /
``EmbeddingBag``): each row of the table quantized with its own float scale and zero point
(``float_qparams_weight_only_qconfig``: 8 bits; ``float_qparams_weight_only_qconfig_4bit``:
4 bits, two per byte), looked up by the ``embedding_bag_rowwise`` kernel.

The table is one uint8 buffer ``packed_weight`` [num_embeddings, row_stride]: each row's
values, padded to 4 bytes, then its float32 scale and zero point (the kernel reads a row and its
qparams from one place). It is a plain tensor: ``torch.load(weights_only=True)`` reads it.

The lookups return the dtype of the float table they were converted from (``output_dtype``:
float32, or float16 / bfloat16 / float64 for a model kept in that precision), so that the float
layers after them get their own dtype; the kernel computes in float32 and the result is cast
once. The dtype is held by an empty non-persistent buffer, so that ``.half()`` / ``.float()`` of
the converted model move it with the model's float modules (the packed table, uint8, is not cast).

    >>> emb.qconfig = torchquant.float_qparams_weight_only_qconfig
    >>> qemb = torchquant.convert(torchquant.prepare(emb))
"""
import copy
import warnings
from typing import Optional

import torch
from torch import nn

from .. import _fastcall
from .._ops import embedding_row_stride as _row_stride
from .._ops import ops
from .._stack import user_stacklevel
from ..observer import _apply_keeping_integers, _int_arg
from ._state_dict import OutputDtype, integer_load_errors

__all__ = ["Embedding", "EmbeddingBag", "pack_rowwise", "unpack_rowwise"]

_BITS = {torch.quint8: 8, torch.quint4x2: 4}
_MODES = {"sum": 0, "mean": 1, "max": 2}


def pack_rowwise(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """The packed table of ``embedding_bag_rowwise`` from quantized rows ``q`` (uint8 [N, dim]
    for 8 bits; for 4 bits uint8 [N, ceil(dim / 2)], two values per byte, low nibble first) and
    per-row float ``scale`` / ``zero_point`` [N]."""
    n = q.shape[0]
    data = (dim * bits + 7) // 8
    if q.dtype != torch.uint8 or tuple(q.shape) != (n, data):
        raise ValueError(f"argument 'q' must be uint8 of shape [{n}, {data}] for {bits}-bit rows of {dim} values, "
                         f"got {q.dtype} {tuple(q.shape)}")
    stride = _row_stride(dim, bits)
    pad = q.new_zeros((n, stride - 8 - data))
    qp = torch.stack([scale.float().reshape(n), zero_point.float().reshape(n)], 1).contiguous().view(torch.uint8)
    return torch.cat([q, pad, qp.to(q.device)], 1).contiguous()


def unpack_rowwise(packed: torch.Tensor, bits: int, dim: int):
    """(values int64 [N, dim], scale float32 [N], zero_point float32 [N]) of a packed table."""
    n = packed.shape[0]
    data = (dim * bits + 7) // 8
    qp = packed[:, -8:].contiguous().view(torch.float32)
    raw = packed[:, :data].to(torch.int64)
    if bits == 4:
        raw = torch.stack([raw & 15, raw >> 4], 2).reshape(n, 2 * data)[:, :dim]  # (n may be 0)
    return raw, qp[:, 0].contiguous(), qp[:, 1].contiguous()


def _weight_observer(mod, name: str):
    """The weight observer of ``mod``'s qconfig, checked to be a float_qparams one; a QAT
    module's own ``weight_fake_quant`` (trained with the table; it observes the final table once
    more at convert, as torch.ao's)."""
    fq = getattr(mod, "weight_fake_quant", None)
    qconfig = getattr(mod, "qconfig", None)
    if fq is None and qconfig is None:
        raise RuntimeError(f"{name} has no qconfig: set float_qparams_weight_only_qconfig (or its _4bit version)")
    obs = fq if fq is not None else qconfig.weight()
    dtype = getattr(obs, "dtype", None)
    if getattr(obs, "qscheme", None) != torch.per_channel_affine_float_qparams or dtype not in _BITS:
        raise ValueError(f"{name}: embedding quantization needs a weight observer with "
                         "qscheme=torch.per_channel_affine_float_qparams and dtype torch.quint8 or torch.quint4x2 "
                         "(torchquant.float_qparams_weight_only_qconfig or float_qparams_weight_only_qconfig_4bit), "
                         f"got {getattr(obs, 'qscheme', None)} / {dtype}")
    ch_axis = getattr(obs, "ch_axis", 0)
    if ch_axis != 0:  # (its qparams would be per column, and the rows quantized with them)
        raise ValueError(f"{name}: embedding quantization needs a weight observer with ch_axis=0 (one scale and "
                         f"zero point per row of the table), got ch_axis={ch_axis}")
    return obs


def _kept_float(mod, name: str):
    """from_float's answer for a table with ``max_norm`` (rows renormalized in place on lookup,
    which a quantized table cannot do): the float module, warned about by name, so that convert
    and quantize_dynamic quantize the model's other tables and leave this one float. A shallow
    copy (the same weight) without forward hooks, which the caller copies over as for any
    replacement."""
    warnings.warn(f"{name} ({type(mod).__name__}) stays in float: it has max_norm={mod.max_norm}, which renormalizes "
                  "rows of the table on lookup, and a quantized table cannot (torch.ao's quantized tables ignore "
                  "max_norm)", UserWarning, stacklevel=user_stacklevel())
    keep = copy.copy(mod)
    for key, value in vars(mod).items():  # (containers of its own: the copy's changes stay its own)
        if isinstance(value, (dict, set)):
            keep.__dict__[key] = copy.copy(value)
    for hooks in (keep._forward_pre_hooks, keep._forward_pre_hooks_with_kwargs, keep._forward_hooks,
                  keep._forward_hooks_with_kwargs, keep._forward_hooks_always_called):
        hooks.clear()
    return keep


def _check_rows(name: str, what: str, bad: torch.Tensor) -> None:
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        shown = ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")
        raise ValueError(f"{name}: row(s) {shown} of the embedding weight ({len(rows)} of {bad.numel()}) {what}")


def _quantize_table(weight: torch.Tensor, obs, name: str):
    """(packed table, bits) of a float weight [N, D] under a float_qparams weight observer,
    quantized as torch.ao's quantize_per_channel quantizes it."""
    dtype = obs.dtype
    bits = _BITS[dtype]
    w = weight.detach().float().cpu()
    if w.numel() == 0:
        # No rows, or rows of no values (as nn.Embedding takes them): nothing to observe. Each
        # row (if any) gets the qparams of a constant row, scale 1 and zero point 0.
        n = w.shape[0]
        packed = pack_rowwise(_row_bytes(torch.zeros(w.shape, dtype=torch.uint8), bits), torch.ones(n),
                              torch.zeros(n), bits, weight.shape[1])
        return packed.to(weight.device), bits
    _check_rows(name, "have no finite value (a row's qparams come from its finite values)",
                ~torch.isfinite(w).any(1) if w.shape[1] else torch.zeros(w.shape[0], dtype=torch.bool))
    # observed where the observer's state lives (a QAT module's fake-quant moves with the model)
    dev = next((b.device for b in obs.buffers()), torch.device("cpu")) if isinstance(obs, nn.Module) else w.device
    obs(w.to(dev))
    scale, zp = obs.calculate_qparams()
    scale, zp = scale.float().cpu(), zp.float().cpu()
    # A finite row whose max - min overflows float32 ([-3e38, 3e38]) would get an infinite scale:
    # NaN lookups, and a state dict that its own load refuses.
    _check_rows(name, "span a range float32 cannot hold (max - min overflows), which gives them a scale of inf",
                ~(torch.isfinite(scale) & torch.isfinite(zp)))
    # torch's quantize_val_float_qparams (what torch.ao's quantize_per_channel runs for these
    # qparams), without its deprecated quantized tensors: q = clamp(rint(x * (1 / scale) + zp)).
    inv = torch.where(scale == 0, torch.ones_like(scale), 1.0 / scale)
    t = torch.round(w * inv[:, None] + zp[:, None])
    # NaN has no code: it takes the code of 0.0 (round(zp)), as the quantize ops define it (a NaN
    # cast to uint8 is undefined: it came out as the row's minimum); +-inf saturate
    t = torch.nan_to_num(torch.where(torch.isnan(t), torch.round(zp)[:, None].expand_as(t), t), nan=0.0)
    v = t.clamp(0, (1 << bits) - 1).to(torch.uint8)
    return pack_rowwise(_row_bytes(v, bits), scale, zp, bits, weight.shape[1]).to(weight.device), bits


def _row_bytes(v: torch.Tensor, bits: int) -> torch.Tensor:
    """The data bytes of rows of codes v (uint8 [N, D]): as they are for 8 bits; for 4 bits two
    per byte, low nibble first."""
    if bits == 8:
        return v.contiguous()
    if v.shape[1] % 2:
        v = torch.cat([v, v.new_zeros((v.shape[0], 1))], 1)
    return (v[:, 0::2] | (v[:, 1::2] << 4)).contiguous()


def _record_row_format(module, state_dict, prefix, local_metadata):
    """state_dict hook: the rows' width and bits in the module's metadata (kept by torch.save and
    torch.load(weights_only=True)), checked on load."""
    local_metadata["embedding_dim"] = module.embedding_dim
    local_metadata["bits"] = module.bits


class _EmbeddingBase(OutputDtype, nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, dtype=torch.quint8):
        super().__init__()
        if dtype not in _BITS:
            raise ValueError(f"argument 'dtype' must be torch.quint8 or torch.quint4x2, got {dtype}")
        for arg, v in (("num_embeddings", num_embeddings), ("embedding_dim", embedding_dim)):
            if v < 0:  # (nn.Embedding's RuntimeError, at construction, naming the argument)
                raise RuntimeError(f"{type(self).__name__}: argument '{arg}' must be non-negative, got {v}")
        self.num_embeddings, self.embedding_dim, self.dtype = num_embeddings, embedding_dim, dtype
        self.bits = _BITS[dtype]
        self.register_buffer("packed_weight",
                             torch.zeros(num_embeddings, _row_stride(embedding_dim, self.bits), dtype=torch.uint8))
        self._init_output_dtype()  # (from_float sets the float table's)
        self.register_state_dict_post_hook(_record_row_format)

    def __setstate__(self, state):
        # Pickled before the output dtype was a buffer: float32, as such a module returned.
        super().__setstate__(state)
        self._restore_output_dtype()

    def _apply(self, fn, *args, **kwargs):
        # The packed uint8 rows keep their dtype under .type(torch.float32), which casts every
        # tensor (the output dtype follows casts as a float table would).
        return _apply_keeping_integers(self, super()._apply, fn, *args, **kwargs)

    @property
    def qweight(self) -> torch.Tensor:
        """The quantized values, int64 [num_embeddings, embedding_dim] (unpacked copy)."""
        return unpack_rowwise(self.packed_weight, self.bits, self.embedding_dim)[0]

    @property
    def weight_scale(self) -> torch.Tensor:
        return unpack_rowwise(self.packed_weight, self.bits, self.embedding_dim)[1]

    @property
    def weight_zero_point(self) -> torch.Tensor:
        return unpack_rowwise(self.packed_weight, self.bits, self.embedding_dim)[2]

    def dequantized_weight(self) -> torch.Tensor:
        """The float table the kernel looks up, float32 [num_embeddings, embedding_dim]: each
        row's values as ``Embedding`` returns them before its cast to ``output_dtype`` (8-bit
        rows: fma(q, scale, -(zero_point * scale)), rounded once, within an ulp or so of
        (q - zero_point) * scale; 4-bit rows: (q - zero_point) * scale). Computed by the kernel
        itself (a max over each row alone)."""
        rows = torch.arange(self.num_embeddings, device=self.packed_weight.device).reshape(-1, 1)
        return ops.embedding_bag_rowwise.default(self.packed_weight, self.bits, self.embedding_dim, rows, None, 2,
                                                 None, False, None)

    def weight(self) -> torch.Tensor:
        """torch.ao's accessor: the table as a torch quantized tensor (quint8 / quint4x2,
        ``torch.per_channel_affine_float_qparams`` along rows, float32 scales and zero points), a
        copy on the CPU."""
        q, scale, zp = unpack_rowwise(self.packed_weight.cpu(), self.bits, self.embedding_dim)
        if self.bits == 8:
            return torch._make_per_channel_quantized_tensor(q.to(torch.uint8), scale.double(), zp, 0)
        # (quint4x2 has no constructor from codes: its rows are quantized back from (q - zp) *
        # scale, which rounds to q exactly)
        return torch.quantize_per_channel((q - zp[:, None]) * scale[:, None], scale, zp, 0, torch.quint4x2)

    def set_weight(self, w: torch.Tensor) -> None:
        """torch.ao's setter: takes a table as :meth:`weight` returns it (its codes and row qparams
        as they are; torch.ao's 4-bit tables of an odd width carry one more column, which is dropped)."""
        want = [self.num_embeddings, self.embedding_dim]
        padded = [want[0], want[1] + 1] if self.bits == 4 and want[1] % 2 else want
        if not (isinstance(w, torch.Tensor) and w.is_quantized and w.qscheme() == torch.per_channel_affine_float_qparams
                and w.q_per_channel_axis() == 0 and w.dtype == self.dtype and list(w.shape) in (want, padded)):
            got = (f"{w.dtype} {w.qscheme() if w.is_quantized else 'not quantized'} {list(w.shape)}"
                   if isinstance(w, torch.Tensor) else type(w).__name__)
            raise ValueError(f"argument 'w' must be a {self.dtype} tensor quantized per row "
                             f"(torch.per_channel_affine_float_qparams, axis 0) of shape {want}, got {got}")
        w = w.cpu()
        scale, zp = w.q_per_channel_scales().float(), w.q_per_channel_zero_points().float()
        _check_rows("set_weight", "have a scale or zero point that is not finite",
                    ~(torch.isfinite(scale) & torch.isfinite(zp)))
        if self.bits == 8:
            v = w.int_repr()
        else:
            v = torch.round(w.dequantize()[:, :want[1]] * (1.0 / scale)[:, None] + zp[:, None]).clamp(0, 15)
            v = v.to(torch.uint8)
        packed = pack_rowwise(_row_bytes(v, self.bits), scale, zp, self.bits, self.embedding_dim)
        self.packed_weight = ops.streamed_copy.default(packed.to(self.packed_weight.device))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # The packed rows are uint8 (values and qparam bytes): another dtype would be cast silently.
        errors = integer_load_errors(self, state_dict, prefix, ("packed_weight",))
        # Several widths share a row stride (8-bit rows of 5 to 8 values are 16 bytes): the
        # state dict's metadata says which width and bits its rows hold (a state dict without
        # them, built by hand, is taken by its shape alone).
        for key, mine in (("embedding_dim", self.embedding_dim), ("bits", self.bits)):
            theirs = (local_metadata or {}).get(key)
            if theirs is not None and theirs != mine:
                errors.append(f"size mismatch for {prefix}packed_weight: its rows hold {key}={theirs}, this "
                              f"{type(self).__name__} has {key}={mine}")
        given = state_dict.get(prefix + "packed_weight")
        if (not errors and isinstance(given, torch.Tensor) and given.dim() == 2 and given.device.type != "meta"
                and given.shape[1] == self.packed_weight.shape[1] and given.shape[0]):
            # Each row ends in its float32 scale and zero point: a NaN / inf there would make the
            # row's every lookup NaN / inf without a word.
            qp = given[:, -8:].contiguous().view(torch.float32)
            bad = ~torch.isfinite(qp).all(1)
            if bool(bad.any()):
                rows = bad.nonzero().flatten()
                errors.append(f"{prefix}packed_weight: the scale / zero point of row(s) {rows[:10].tolist()} "
                              f"(bytes [-8:] of each row, float32) are not finite")
        if errors:
            error_msgs.extend(errors)
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if prefix + "packed_weight" in state_dict:  # the loaded table, onto huge pages (from_float's too)
            self.packed_weight = ops.streamed_copy.default(self.packed_weight)

    def _lookup(self, indices, offsets, mode, per_sample_weights, include_last_offset, padding_idx):
        packed, bits, dim = self.packed_weight, self.bits, self.embedding_dim
        # (attributes of another type, include_last_offset = 1 or padding_idx = 2.0, go to
        # torch.ops: its conversions and its errors, which name the argument)
        if (_fastcall.usable_all((packed, indices), (offsets, per_sample_weights))
                and type(include_last_offset) is bool and (padding_idx is None or _fastcall.is_int64(padding_idx))
                and _fastcall.is_int64(bits) and _fastcall.is_int64(dim)):
            return _fastcall.embedding_bag_rowwise(packed, bits, dim, indices, offsets, mode, per_sample_weights,
                                                   include_last_offset, padding_idx)
        return ops.embedding_bag_rowwise.default(packed, bits, dim, indices, offsets, mode, per_sample_weights,
                                                 include_last_offset, padding_idx)

    def _load(self, mod, name):
        packed, bits = _quantize_table(mod.weight, _weight_observer(mod, name), name)
        if bits != self.bits:
            raise ValueError(f"{name}: qconfig gives {bits}-bit rows, module built for {self.bits}")
        self._take_table(packed, mod.weight.dtype)

    def _take_table(self, packed, float_dtype):
        """The packed rows of a float table of ``float_dtype``, whose dtype the lookups return
        (what the model's next layers take)."""
        self.packed_weight = ops.streamed_copy.default(packed)
        if float_dtype.is_floating_point:
            self._init_output_dtype(float_dtype, self.packed_weight.device)

    def _init_weight(self, weight):
        """The constructor's ``_weight``: a float table [num_embeddings, embedding_dim] (or a torch
        quantized one, as torch.ao takes, dequantized first), quantized per row as ``from_float``
        quantizes it."""
        if weight is None:
            return
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"argument '_weight' must be a Tensor or None, got {type(weight).__name__}")
        if list(weight.shape) != [self.num_embeddings, self.embedding_dim]:
            raise ValueError(f"argument '_weight': shape {list(weight.shape)} does not match [num_embeddings, "
                             f"embedding_dim] = [{self.num_embeddings}, {self.embedding_dim}]")
        if weight.is_quantized:
            weight = weight.dequantize()
        if not weight.is_floating_point():
            raise TypeError(f"argument '_weight' must be a floating-point (or torch quantized) tensor, got "
                            f"{weight.dtype}")
        from .. import qconfig as _qc
        qc = _qc.float_qparams_weight_only_qconfig if self.bits == 8 else _qc.float_qparams_weight_only_qconfig_4bit
        self._take_table(_quantize_table(weight, qc.weight(), "_weight")[0], weight.dtype)


def _padding_idx(padding_idx: Optional[int], num_embeddings: int) -> Optional[int]:
    """padding_idx as nn.Embedding keeps it: None, or in [0, num_embeddings) (a negative one counted
    from the end)."""
    if padding_idx is None:
        return None
    padding_idx = _int_arg("padding_idx", padding_idx)
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise ValueError(f"padding_idx must be within num_embeddings ({num_embeddings}), got {padding_idx}")
    return padding_idx + num_embeddings if padding_idx < 0 else padding_idx


class Embedding(_EmbeddingBase):
    """Weight-only quantized ``nn.Embedding`` (8-bit or 4-bit rows): ``forward(input)`` returns
    [*input.shape, embedding_dim], the rows of ``dequantized_weight()``, in ``output_dtype``
    (float32, or the dtype of the float table it was converted from).

    >>> emb = nn.Embedding(1000, 64); emb.qconfig = torchquant.float_qparams_weight_only_qconfig
    >>> q = Embedding.from_float(emb); q(torch.tensor([[1, 2], [3, 4]])).shape
    torch.Size([2, 2, 64])
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: Optional[int] = None, max_norm=None,
                 norm_type: float = 2.0, scale_grad_by_freq: bool = False, sparse: bool = False, _weight=None,
                 dtype=torch.quint8):
        super().__init__(num_embeddings, embedding_dim, dtype)
        if max_norm is not None:
            raise NotImplementedError("torchquant's quantized Embedding has no max_norm (the table is read-only)")
        self.padding_idx = _padding_idx(padding_idx, num_embeddings)
        self._init_weight(_weight)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # (torch.nn's name, for calls with input=)
        indices = input
        if not isinstance(indices, torch.Tensor):
            raise TypeError(f"argument 'input' must be a Tensor, got {type(indices).__name__}")
        # A bag of one in max mode is the row's value itself, fma(q, s, b) rounded once for 8-bit
        # rows (a sum of one would round q * s and then add b).
        flat = indices.reshape(-1, 1)
        out = self._lookup(flat, None, 2, None, False, None)
        return self._to_output_dtype(out.reshape(*indices.shape, self.embedding_dim))

    @classmethod
    def from_float(cls, mod, name: Optional[str] = None, use_precomputed_fake_quant: bool = False):
        """Quantizes an ``nn.Embedding`` with its qconfig (float_qparams_weight_only_qconfig or
        float_qparams_weight_only_qconfig_4bit). One with ``max_norm`` stays float, with a warning
        naming it (the float module, without its forward hooks, which convert copies over)."""
        name = name or type(mod).__name__
        if mod.max_norm is not None:
            return _kept_float(mod, name)
        dtype = _weight_observer(mod, name).dtype
        q = cls(mod.num_embeddings, mod.embedding_dim, padding_idx=mod.padding_idx, dtype=dtype)
        q._load(mod, name)
        return q

    def extra_repr(self):
        return (f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}"
                + ("" if self.padding_idx is None else f", padding_idx={self.padding_idx}") + f", dtype={self.dtype}"
                + ("" if self.output_dtype is None else f", output_dtype={self.output_dtype}"))

    def _get_name(self):
        return "QuantizedEmbedding"


def _bag_of_entries(indices, offsets, include_last_offset):
    """The bag each index falls in, int64 [indices.numel()]; -1 for the indices past the last
    offset with include_last_offset (the lookup leaves them out)."""
    n = indices.numel()
    if indices.dim() == 2:
        return torch.arange(indices.shape[0], device=indices.device).repeat_interleave(indices.shape[1])
    off = offsets.to(torch.int64)
    bags = torch.searchsorted(off, torch.arange(n, device=indices.device), right=True) - 1
    if include_last_offset:
        bags = torch.where(bags >= off.numel() - 1, -1, bags)
    return bags


class _PerSampleWeightsGrad(torch.autograd.Function):
    """The gradient of a sum bag with respect to per_sample_weights (the table is a read-only int8
    buffer: it gets none): dL/dw[i] = row(indices[i]) . dL/dout[bag of i], with the quantized rows
    the forward summed, 0 for padding_idx entries and entries in no bag, as nn.EmbeddingBag's."""

    @staticmethod
    def forward(w, run, entry_rows, bags):
        return run(w)

    @staticmethod
    def setup_context(ctx, inputs, output):
        w, _, ctx.entry_rows, ctx.bags = inputs
        ctx.w_shape = w.shape

    @staticmethod
    def backward(ctx, gy):
        rows, bags = ctx.entry_rows(), ctx.bags()
        if rows.numel() == 0 or gy.numel() == 0:
            return torch.zeros(ctx.w_shape, device=gy.device), None, None, None
        g = gy.float()[bags.clamp(min=0)]
        gw = (rows * g).sum(-1) * (bags >= 0)
        return gw.reshape(ctx.w_shape), None, None, None


class EmbeddingBag(_EmbeddingBase):
    """Weight-only quantized ``nn.EmbeddingBag`` (8-bit or 4-bit rows): sum / mean / max bags,
    offsets or 2-D indices, include_last_offset, per_sample_weights (sum; of any float dtype,
    taken as float32), padding_idx. Returns ``output_dtype`` (float32, or the dtype of the float
    table it was converted from).

    >>> bag = nn.EmbeddingBag(1000, 64, mode="sum"); bag.qconfig = torchquant.float_qparams_weight_only_qconfig_4bit
    >>> q = EmbeddingBag.from_float(bag); q(torch.tensor([1, 2, 3]), torch.tensor([0, 2])).shape
    torch.Size([2, 64])
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, max_norm=None, norm_type: float = 2.0,
                 scale_grad_by_freq: bool = False, mode: str = "sum", sparse: bool = False, _weight=None,
                 include_last_offset: bool = False, dtype=torch.quint8, padding_idx: Optional[int] = None):
        super().__init__(num_embeddings, embedding_dim, dtype)
        if mode not in _MODES:
            raise ValueError(f"mode has to be one of sum, mean or max, got {mode!r}")
        if max_norm is not None:
            raise NotImplementedError("torchquant's quantized EmbeddingBag has no max_norm (the table is read-only)")
        self.mode, self.include_last_offset = mode, include_last_offset
        self.padding_idx = _padding_idx(padding_idx, num_embeddings)
        self._init_weight(_weight)

    def forward(self, input: torch.Tensor, offsets: Optional[torch.Tensor] = None,
                per_sample_weights: Optional[torch.Tensor] = None,
                compressed_indices_mapping: Optional[torch.Tensor] = None) -> torch.Tensor:
        # (`input`, offsets, per_sample_weights: torch.nn's names, for calls by keyword;
        # compressed_indices_mapping: torch.ao's, after them)
        indices = input
        if compressed_indices_mapping is not None:
            raise NotImplementedError("compressed_indices_mapping (pruned tables) is not supported")
        if not isinstance(indices, torch.Tensor):
            raise TypeError(f"argument 'input' must be a Tensor, got {type(indices).__name__}")
        # nn.EmbeddingBag's checks, in its order and with its exception types
        if isinstance(per_sample_weights, torch.Tensor) and per_sample_weights.shape != indices.shape:
            raise ValueError(f"embedding_bag: If per_sample_weights ({per_sample_weights.shape}) is not None, then "
                             f"it must have the same shape as the input ({indices.shape})")
        if indices.dim() == 2 and offsets is not None:
            raise ValueError("if input is 2D, then offsets has to be None, as input is treated is a mini-batch of "
                             "fixed length sequences.")
        if indices.dim() == 1 and offsets is None:
            raise ValueError("offsets has to be a 1D Tensor but got None")
        if indices.dim() == 1 and isinstance(offsets, torch.Tensor) and offsets.dim() != 1:
            raise ValueError(f"offsets has to be a 1D Tensor, got argument 'offsets' of dimension {offsets.dim()}")
        if indices.dim() not in (1, 2):
            raise ValueError(f"input has to be 1D or 2D Tensor, but got Tensor of dimension {indices.dim()}")
        if per_sample_weights is not None and self.mode != "sum":
            raise NotImplementedError("embedding_bag: per_sample_weights was not None. per_sample_weights is only "
                                      f"supported for mode='sum' (got mode={self.mode!r})")
        if per_sample_weights is not None and per_sample_weights.dtype != torch.float32 \
                and per_sample_weights.is_floating_point():
            per_sample_weights = per_sample_weights.float()
        if (per_sample_weights is not None and per_sample_weights.requires_grad and torch.is_grad_enabled()
                and not torch.jit.is_tracing()):
            # (the backward reads its own copies: indices or offsets changed in place before it
            # would give other bags' gradients)
            idx_b, off_b = indices.clone(), None if offsets is None else offsets.clone()
            out = _PerSampleWeightsGrad.apply(
                per_sample_weights, lambda w: self._lookup(indices, offsets, 0, w, self.include_last_offset,
                                                           self.padding_idx),
                lambda: self._entry_rows(idx_b), lambda: _bag_of_entries(idx_b, off_b, self.include_last_offset))
            return self._to_output_dtype(out)
        return self._to_output_dtype(self._lookup(indices, offsets, _MODES[self.mode], per_sample_weights,
                                                  self.include_last_offset, self.padding_idx))

    def _entry_rows(self, indices):
        """The quantized row of every index, [indices.numel(), embedding_dim] float32 (zeros at
        padding_idx, which the bags leave out): each index a bag of its own."""
        flat = indices.reshape(-1)
        own = torch.arange(flat.numel(), dtype=flat.dtype if flat.dtype == torch.int32 else torch.int64,
                           device=flat.device)
        return self._lookup(flat, own, 0, None, False, self.padding_idx)

    @classmethod
    def from_float(cls, mod, name: Optional[str] = None, use_precomputed_fake_quant: bool = False):
        """Quantizes an ``nn.EmbeddingBag`` with its qconfig (float_qparams_weight_only_qconfig or
        float_qparams_weight_only_qconfig_4bit). One with ``max_norm`` stays float, with a warning
        naming it (the float module, without its forward hooks, which convert copies over)."""
        name = name or type(mod).__name__
        if mod.max_norm is not None:
            return _kept_float(mod, name)
        dtype = _weight_observer(mod, name).dtype
        q = cls(mod.num_embeddings, mod.embedding_dim, mode=mod.mode, include_last_offset=mod.include_last_offset,
                dtype=dtype, padding_idx=mod.padding_idx)
        q._load(mod, name)
        return q

    def extra_repr(self):
        return (f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}, mode={self.mode!r}, "
                f"include_last_offset={self.include_last_offset}"
                + ("" if self.padding_idx is None else f", padding_idx={self.padding_idx}") + f", dtype={self.dtype}"
                + ("" if self.output_dtype is None else f", output_dtype={self.output_dtype}"))

    def _get_name(self):
        return "QuantizedEmbeddingBag"

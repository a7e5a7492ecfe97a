"""int4 group-wise weight-only Linear: float activations in and out, 4-bit weights.

The state dict holds the portable format of :mod:`torchquant.int4.format` (plain tensors:
``qweight`` uint8 [N, ceil(K/2)], ``weight_scale`` float32 [N, G], ``weight_zero_point`` uint8
[N, G], ``bias``, and for AWQ without a foldable previous op an ``input_scale`` float32 [K]), so
it loads with ``torch.load(weights_only=True)``; ``weight_format`` int32 [2] holds ``(group_size,
in_features)``, checked on load (shapes alone do not tell group size 32 from 48 at K = 64), also
where the state dict's metadata is lost (safetensors files: Hugging Face's ``save_pretrained``;
a checkpoint saved without it loads as before). The kernel layout (``int4_pack_weight``) is a
set of non-persistent buffers rebuilt for the module's device on ``.to()``, after
``load_state_dict``, and when a module pickled whole (``torch.save(model)``) is loaded onto
another device (``torch.load(..., map_location=...)``). Its buffers cannot be parametrized
(``torch.nn.utils.parametrize.register_parametrization``): a call or a move of a module with a
parametrized buffer is a TypeError naming it.
"""
from typing import Optional

import torch
from torch import nn

from .._ops import _int4_dims, ops
from ..observer import _apply_keeping_float32
from ._compact import CompactWeight, expanded, portable_qweight, unpack_int4_cpu
from ._input_grad import InputGrad, needs_input_grad
from ._state_dict import (integer_load_errors, note_packed, qparam_load_errors, refuse_parametrized, renote_packed,
                          repack_for_copy, repack_if_stale)
from ..int4.format import (QMAX, check_group_size, check_symmetric, choose_group_qparams,
                           dequantize_groups, num_groups, pack_int4, quantize_groups, unpack_int4)

__all__ = ["LinearWeightOnlyInt4", "Int4WeightView"]

_FLOAT_OUT = (torch.float32, torch.bfloat16, torch.float16)


def _record_format(module, state_dict, prefix, local_metadata):
    """state_dict hook: the group size and K in the module's metadata (kept by torch.save and
    torch.load(weights_only=True)), checked on load."""
    local_metadata["group_size"] = module.group_size
    local_metadata["in_features"] = module.in_features


def _check_zero_point(zero_point: torch.Tensor, groups: int) -> None:
    """from_qparams' zero points, checked on the values as given, before the uint8 cast (which
    wraps 256 to 0 and -1 to 255, and truncates 3.9 to 3): integers in [0, 15], in any real
    dtype (as qvalues)."""
    if zero_point.dtype == torch.bool or zero_point.is_complex():
        raise TypeError(f"argument 'zero_point' must hold integers in [0, {QMAX}], got dtype {zero_point.dtype}")
    if not zero_point.numel() or zero_point.is_meta:
        return
    z = zero_point.detach()
    bad = (z < 0) | (z > QMAX)
    if z.is_floating_point():
        bad |= z != torch.round(z)  # (NaN too)
    if bool(bad.any()):
        i = int(bad.reshape(-1).nonzero()[0])
        v = z.reshape(-1)[i].item()
        got = f"{v:g}" + (" (not an integer)" if 0 <= v <= QMAX else "") if isinstance(v, float) else str(v)
        raise ValueError(f"argument 'zero_point' must hold 4-bit zero points, integers in [0, {QMAX}], got {got} "
                         f"at channel {i // groups}, group {i % groups}")


def _check_input_scale(input_scale: torch.Tensor) -> None:
    """from_qparams' input scale, held to load_state_dict's rule (qparam_load_errors): > 0 and
    finite, as float32 (the module's buffer), so that a module built here reloads from its own
    state dict. (The weight scales are checked by the packing, naming 'scale'.)"""
    if not input_scale.numel() or input_scale.is_meta:
        return
    v = input_scale.detach().float()
    bad = ~(torch.isfinite(v) & (v > 0))
    if bool(bad.any()):
        i = int(bad.reshape(-1).nonzero()[0])
        raise ValueError(f"argument 'input_scale' must be > 0 and finite, got {v.reshape(-1)[i].item()} at input "
                         f"channel {i}")


def _materialize(v):
    if isinstance(v, Int4WeightView):
        return v.dequantize()
    if isinstance(v, (tuple, list)):
        return type(v)(_materialize(x) for x in v)
    if isinstance(v, dict):
        return {k: _materialize(x) for k, x in v.items()}
    return v


def _refuse_in_place(name: str) -> None:
    """An in-place tensor method or function (mul_, zero_, copy_; torch.nn.init's) on the view
    would change a dequantized copy and leave the layer as it was, without a word. (Slices, not
    str.endswith, which torch.compile cannot trace: F.linear(x, layer.weight) under fullgraph=True.)"""
    if name[-1:] == "_" and name[-2:] != "__" and name != "requires_grad_":
        raise TypeError(f"Int4WeightView.{name}: the int4 layer's weight view is read-only (an in-place change "
                        "would change a dequantized copy, not the layer); give the layer new weights with "
                        "LinearWeightOnlyInt4.from_float / from_qparams or load_state_dict")


class Int4WeightView:
    """What ``LinearWeightOnlyInt4.weight`` returns: the layer's effective weight ``W`` (``y = x
    @ W.T + bias``) without materializing it. Model code that reads a Linear's ``.weight``
    keeps working on the int4 layer: ``.shape`` / ``.dtype`` (float32) / ``.device`` answer from
    the module, and a torch function, tensor method, index or arithmetic operator given the view
    (``w @ x``, ``F.linear(x, w)``, ``w.t()``, ``w.to(dtype)``, ``w[0]``, ``2 * w``) gets the
    dequantized float32 ``[out_features, in_features]`` tensor (``s * (q - z)``, times the AWQ
    input scale where the layer has one), built at that call: code that reads it per forward pays a dequantization per forward. Being no
    ``torch.Tensor``, ``isinstance(w, torch.Tensor)`` checks (Hugging Face T5's "cast to the
    weight's dtype") skip it, as they skip the int8 Linear's QTensor weight."""

    __slots__ = ("_module",)

    def __init__(self, module: "LinearWeightOnlyInt4"):
        self._module = module

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self._module.out_features, self._module.in_features))

    def size(self, dim: Optional[int] = None):
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return 2

    ndim = property(dim)
    dtype = property(lambda self: torch.float32)
    device = property(lambda self: self._module._buffers["weight_scale"].device)  # (qweight: meta when compact)
    requires_grad = property(lambda self: False)

    def numel(self) -> int:
        return self.shape.numel()

    def dequantize(self) -> torch.Tensor:
        m = self._module
        w = m.dequantized_weight()
        return w if m.input_scale is None else w * m.input_scale.reshape(1, -1)

    def _as(self, other) -> torch.Tensor:
        w = self.dequantize()
        return w.to(other.dtype) if isinstance(other, torch.Tensor) and other.is_floating_point() else w

    def __matmul__(self, other):
        return self._as(other) @ other

    def __rmatmul__(self, other):
        return other @ self._as(other)

    def __len__(self) -> int:
        return self._module.out_features

    def __getitem__(self, index):
        return self.dequantize()[index]

    def __neg__(self):
        return -self.dequantize()

    def __abs__(self):
        return self.dequantize().abs()

    __add__ = lambda self, o: self.dequantize() + o  # noqa: E731
    __radd__ = lambda self, o: o + self.dequantize()  # noqa: E731
    __sub__ = lambda self, o: self.dequantize() - o  # noqa: E731
    __rsub__ = lambda self, o: o - self.dequantize()  # noqa: E731
    __mul__ = lambda self, o: self.dequantize() * o  # noqa: E731
    __rmul__ = lambda self, o: o * self.dequantize()  # noqa: E731
    __truediv__ = lambda self, o: self.dequantize() / o  # noqa: E731
    __rtruediv__ = lambda self, o: o / self.dequantize()  # noqa: E731

    def __getattr__(self, name):  # tensor methods (t, T, to, float, contiguous, ...) on the float weight
        if name.startswith("_"):  # (copy / pickle probing an unset slot: no dequantization)
            raise AttributeError(name)
        _refuse_in_place(name)
        return getattr(self.dequantize(), name)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        _refuse_in_place(getattr(func, "__name__", ""))
        return func(*_materialize(args), **_materialize(kwargs or {}))

    def __repr__(self):
        m = self._module
        return (f"Int4WeightView(shape=({m.out_features}, {m.in_features}), group_size={m.group_size}, "
                f"device={m._buffers['weight_scale'].device})")


class LinearWeightOnlyInt4(CompactWeight, nn.Module):
    """nn.Linear with int4 weights in groups of ``group_size`` along K (one float32 scale and one
    4-bit zero point per group: asymmetric, or symmetric with every zero point 8, in the same
    buffers) and float activations (float32, bfloat16, float16; the output has the input's dtype).

    On the CPU each input row is quantized to int8 on the fly (the dynamic path's per-row
    affine qparams) and multiplied exactly against the 4-bit weights (AVX-512 VNNI / AVX2 /
    scalar); on CUDA the weights are dequantized in registers and multiplied in float32.
    ``torchquant.int4.reference`` holds both semantics in plain torch.

    >>> q = LinearWeightOnlyInt4.from_float(nn.Linear(256, 64), group_size=128)
    >>> y = q(torch.randn(3, 256))
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group_size: int = 128,
                 input_scale: bool = False):
        super().__init__()
        check_group_size(group_size)
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        G = num_groups(in_features, group_size)
        self.register_buffer("qweight", torch.zeros(out_features, (in_features + 1) // 2, dtype=torch.uint8))
        self.register_buffer("weight_scale", torch.ones(out_features, G, dtype=torch.float32))
        self.register_buffer("weight_zero_point", torch.zeros(out_features, G, dtype=torch.uint8))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.register_buffer("input_scale", torch.ones(in_features) if input_scale else None)
        # (group_size, in_features) in the state dict itself: a file without the metadata below
        # (safetensors, Hugging Face's save_pretrained) is checked too
        self.register_buffer("weight_format", torch.tensor([group_size, in_features], dtype=torch.int32))
        for name in ("_w_packed", "_w_qp", "_w_scale"):
            self.register_buffer(name, None, persistent=False)
        self.register_state_dict_post_hook(_record_format)
        self._repack()

    # ---- construction
    @classmethod
    def from_qparams(cls, qvalues: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                     bias: Optional[torch.Tensor], group_size: int, input_scale: Optional[torch.Tensor] = None):
        """From uint4 values [N, K] (uint8 0..15) and group qparams [N, G]: ``w = s * (q - z)``,
        applied to ``x * input_scale`` when input_scale is given. Values and zero points are
        integers in [0, 15], in any real dtype (checked as given, not truncated or wrapped into
        a uint8: a zero point of 3.9, -1 or 256 is a ValueError naming its channel and group)."""
        if not isinstance(qvalues, torch.Tensor) or qvalues.dim() != 2:
            raise ValueError(f"argument 'qvalues' must be a 2-D tensor [out_features, in_features], got "
                             f"{tuple(qvalues.shape) if isinstance(qvalues, torch.Tensor) else type(qvalues).__name__}")
        N, K = qvalues.shape
        m = cls(K, N, bias is not None, group_size, input_scale is not None)
        if qvalues.dtype == torch.bool or qvalues.is_complex():
            raise TypeError(f"argument 'qvalues' must hold integers in [0, 15], got dtype {qvalues.dtype}")
        if qvalues.numel():
            src = qvalues.detach()
            if src.dtype not in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
                src = src.to(torch.float64)  # (an integer dtype's range is read as it is: no copy of 8 bytes a value)
            lo, hi = (float(v) for v in torch.aminmax(src))
            if lo < 0 or hi > 15:
                hint = " (signed int4 values q in [-8, 7] are q + 8, with zero points + 8)" if lo < 0 else ""
                raise ValueError(f"argument 'qvalues' must hold unsigned 4-bit values in [0, 15], got values in "
                                 f"[{lo:g}, {hi:g}]{hint}")
            if qvalues.is_floating_point() and not torch.equal(qvalues, torch.round(qvalues)):
                raise ValueError("argument 'qvalues' must hold integers in [0, 15], got non-integer values")
        for name, t, shape in (("scale", scale, m.weight_scale.shape), ("zero_point", zero_point,
                                                                         m.weight_zero_point.shape),
                               ("bias", bias, (N,)), ("input_scale", input_scale, (K,))):
            if t is not None and (not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(shape)):
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"argument '{name}' must have shape {tuple(shape)} for qvalues of shape {(N, K)} "
                                 f"and group_size={group_size}, got {got}")
        _check_zero_point(zero_point, m.weight_zero_point.shape[1])
        if input_scale is not None:
            _check_input_scale(input_scale)
        m.qweight.copy_(pack_int4(qvalues.cpu()))
        m.weight_scale.copy_(scale.detach().float().cpu())
        m.weight_zero_point.copy_(zero_point.cpu().to(torch.uint8))
        if bias is not None:
            m.bias.copy_(bias.detach().float().cpu())
        if input_scale is not None:
            m.input_scale.copy_(input_scale.detach().float().cpu())
        m._repack()
        return m.to(qvalues.device)

    @classmethod
    def from_float(cls, mod: nn.Linear, group_size: int = 128, symmetric: bool = False):
        """Round-to-nearest int4 of an nn.Linear's weight (``torchquant.quantize_weight_only``
        runs GPTQ or AWQ instead); ``symmetric``: zero points 8 and scales ``2 * max|w_g| / 15``."""
        if not isinstance(mod, nn.Linear):
            raise TypeError(f"argument 'mod' must be an nn.Linear, got {type(mod).__name__}")
        check_group_size(group_size)
        check_symmetric(symmetric)
        w = mod.weight.detach().float()
        scale, zp = choose_group_qparams(w, group_size, symmetric)
        q = quantize_groups(w, scale, zp, group_size)
        return cls.from_qparams(q, scale, zp, mod.bias, group_size)

    # ---- the weight
    @property
    def weight(self) -> Int4WeightView:
        """The effective weight as an :class:`Int4WeightView` (shape, dtype, device; dequantized
        when a torch function reads it), so that model code reading ``layer.weight`` runs."""
        return Int4WeightView(self)

    def qvalues(self) -> torch.Tensor:
        """The uint4 values as uint8 [N, K]."""
        w = portable_qweight(self)  # (a compact layer's, rebuilt: it stays compact)
        return unpack_int4(self.qweight if w is None else w, self.in_features)

    def dequantized_weight(self) -> torch.Tensor:
        """``s * (q - z)`` as float32 [N, K] (the effective weight on ``x * input_scale``)."""
        return dequantize_groups(self.qvalues(), self.weight_scale, self.weight_zero_point, self.group_size)

    def _repack(self):
        self._w_packed, self._w_qp, self._w_scale = ops.int4_pack_weight(
            self.qweight, self.weight_scale, self.weight_zero_point, self.in_features, self.group_size)
        note_packed(self, ("qweight", "weight_scale", "weight_zero_point"), "_w_packed")

    _unpack_attrs = ("out_features", "in_features", "group_size")

    def _unpack_qweight(self, bufs, shape):
        p = bufs.get("_w_packed")
        if p is None:
            raise NotImplementedError
        if p.device.type == "cpu":
            # pack_int4 without its cast to uint8 (the values are uint8): torch.export records the
            # cast as a dtype assertion that dead-code elimination keeps, and with it the whole
            # read-back of a trace that only looked at the weight's shape
            v = unpack_int4_cpu(p, self.out_features, self.in_features, self.group_size)
            if v.shape[1] % 2:
                v = torch.cat([v, v.new_zeros(v.shape[0], 1)], 1)
            return v[:, 0::2] | (v[:, 1::2] << 4)
        if p.device.type == "cuda":
            # [N, K padded to the group / 2]: the portable bytes, then the zero points' nibbles
            # (one in the high half of the last byte for an odd K, where the portable byte has 0)
            q = p[:, :shape[1]].clone(memory_format=torch.contiguous_format)
            if self.in_features % 2:
                q[:, -1] &= 0x0F
            return q
        raise NotImplementedError

    def _set_format(self):
        f = self._buffers.get("weight_format")
        if isinstance(f, torch.Tensor) and not f.is_meta:
            want = torch.tensor([self.group_size, self.in_features], dtype=f.dtype)
            if f.shape == want.shape and torch.equal(f.cpu(), want):
                return  # (as it is: no write)
            if f.is_inference() and not torch.is_inference_mode_enabled():
                # (a module made under inference_mode, moved or cast outside it: an inference
                # tensor takes no in-place write there)
                self._buffers["weight_format"] = want.to(f.device)
            else:
                with torch.no_grad():
                    f.copy_(want)

    def __setstate__(self, state):
        super().__setstate__(state)
        if "weight_format" not in self._buffers:  # pickled before the buffer existed
            self.register_buffer("weight_format", torch.zeros(2, dtype=torch.int32, device=self._buffers["weight_scale"].device))
            self._set_format()
        # A whole module pickled (torch.save(model)) carries its kernel layout: one for another
        # device (torch.load(map_location=...)) is rebuilt.
        if self._packed_layout_stale():
            self._repack()
        renote_packed(self)
        self._compact_again()

    def _packed_layout_stale(self) -> bool:
        """Whether the kernel layout in place is not the one ``int4_pack_weight`` builds for the
        weight where it lives now: on another device, or of another shape (another device's). No
        layout (a move that could not pack: .to_empty()'s memory) is left to the next call."""
        b = self._buffers
        w, packed = b.get("qweight"), b.get("_w_packed")
        if not isinstance(w, torch.Tensor) or w.device.type == "meta" or not isinstance(packed, torch.Tensor):
            return False
        if any(isinstance(b.get(k), torch.Tensor) and b[k].device != w.device
               for k in ("_w_packed", "_w_qp", "_w_scale")):
            return True
        G, Kp, P = _int4_dims(self.in_features, self.out_features, self.group_size)
        # (int4_pack_weight's shapes: on CUDA the portable bytes padded to whole groups, on the
        # CPU one record of weights and qparams per (panel, group))
        want = (self.out_features, Kp // 2) if w.device.type == "cuda" else (P, G, 8 * self.group_size + 128)
        return tuple(packed.shape) != want

    def __getstate__(self):
        repack_for_copy(self)
        return self._portable_state(super().__getstate__())

    def _apply(self, fn, *args, **kwargs):
        # Moves follow the device; dtype casts (.half()) leave the float32 qparams, bias and
        # input scale as they are (they are part of the int4 computation), then repack.
        # Values that cannot be packed (the uninitialized memory of .to_empty(), filled by the
        # load_state_dict that follows) defer the packing, and its error, to the next call.
        # A parametrized buffer is refused before anything moves.
        refuse_parametrized(self)
        with expanded(self):  # (rebuilt from the layout about to be replaced)
            _apply_keeping_float32(self, super()._apply, fn, *args, **kwargs)
            self._set_format()  # (to_empty leaves it uninitialized)
            try:
                self._repack()
            except RuntimeError:
                self._w_packed = self._w_qp = self._w_scale = None
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # The packed nibbles and the zero points are uint8: another dtype would be cast silently.
        errors = integer_load_errors(self, state_dict, prefix, ("qweight", "weight_zero_point"))
        errors += qparam_load_errors(self, state_dict, prefix)
        # Group sizes that give the same number of groups give the same shapes (K = 64: 32 and
        # 48), as do K = 63 and 64: the state dict's weight_format and its metadata name the group
        # size and K it was packed for (a state dict with neither, saved before weight_format
        # existed or built by hand, is taken by its shapes alone).
        recorded = {}
        fmt_key = prefix + "weight_format"
        fmt = state_dict.get(fmt_key)
        if isinstance(fmt, torch.Tensor):
            if fmt.is_floating_point() or fmt.is_complex() or fmt.dtype == torch.bool or tuple(fmt.shape) != (2,):
                errors.append(f"{fmt_key}: the quantized {type(self).__name__}'s weight_format must be 2 integers "
                              f"(group_size, in_features), got dtype {fmt.dtype} and shape {tuple(fmt.shape)}")
            elif not fmt.is_meta:
                recorded = dict(zip(("group_size", "in_features"), fmt.tolist()))
        for key, mine in (("group_size", self.group_size), ("in_features", self.in_features)):
            for theirs in ((local_metadata or {}).get(key), recorded.get(key)):
                if theirs is not None and theirs != mine:
                    errors.append(f"{prefix}qweight was quantized with {key}={theirs}, this {type(self).__name__} "
                                  f"has {key}={mine}")
                    break
        zp = state_dict.get(prefix + "weight_zero_point")
        if isinstance(zp, torch.Tensor) and zp.dtype == torch.uint8 and bool((zp > 15).any()):
            errors.append(f"{prefix}weight_zero_point: 4-bit zero points lie in [0, 15], got {int(zp.max())}")
        if errors:
            error_msgs.extend(errors)
            return
        if isinstance(state_dict.get(prefix + "input_scale"), torch.Tensor) and self.input_scale is None:
            # An AWQ layer whose scale could not be folded keeps an input scale: a skeleton built
            # without one (quantize_weight_only(method="rtn"), no data) takes it from the checkpoint.
            self.register_buffer("input_scale", torch.ones(self.in_features, device=self._buffers["weight_scale"].device))
        with expanded(self):  # (the load writes into the weight; a strict=False load may leave it)
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                          error_msgs)
            if fmt_key in missing_keys and fmt_key not in state_dict and prefix + "qweight" in state_dict:
                missing_keys.remove(fmt_key)  # a checkpoint saved before weight_format existed
            self._set_format()  # (the values checked above, in this buffer's dtype)
            self._repack()

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # nn.Linear's name: fc(input=x) works too
        x = input
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{type(self).__name__} takes a floating-point tensor, got "
                            f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
        # (a KeyError of a buffer read: one that register_parametrization moved, refused by name)
        try:
            repack_if_stale(self)
            b = self._buffers
            odt = x.dtype
            if odt not in _FLOAT_OUT:
                x = x.float()
            if b["input_scale"] is not None:
                x = x * b["input_scale"].to(x.dtype)
            if b["_w_packed"] is None:
                self._repack()
            if needs_input_grad(x):  # training through the layer: dL/dx = dL/dy @ W (nn/_input_grad.py)
                y = InputGrad.apply(x, lambda t: ops.linear_int4(t, b["_w_packed"], b["_w_qp"], b["_w_scale"],
                                                                 b["bias"], self.in_features, self.out_features,
                                                                 self.group_size),
                                    self.dequantized_weight, False)
            else:
                y = ops.linear_int4(x, b["_w_packed"], b["_w_qp"], b["_w_scale"], b["bias"], self.in_features,
                                    self.out_features, self.group_size)
        except KeyError as e:
            refuse_parametrized(self, e)
            raise
        return y if y.dtype == odt else y.to(odt)

    def weight_bytes(self) -> int:
        """Bytes of the persistent state (qweight, qparams, bias, input scale, weight_format)."""
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"group_size={self.group_size}, input_scale={self.input_scale is not None}")

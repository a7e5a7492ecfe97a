"""Dynamic int8 recurrent modules: LSTM, GRU, LSTMCell, GRUCell, RNNCell (torch.ao's
``torch.ao.nn.quantized.dynamic`` names, every option of the float modules).

Each weight matrix (``weight_ih``, ``weight_hh`` and LSTM's projection ``weight_hr``, per layer
and direction) is an int8 :class:`~torchquant.nn.quantized.DynamicLinear` child, quantized per
output channel and packed once. A forward pass makes, per layer and direction, one
``linear_dynamic`` call for the input projection of the whole sequence, then per time step one
``linear_dynamic`` for the recurrent projection (plus one for LSTM's ``proj_size``) and one
fused ``lstm_cell_update`` / ``gru_cell_update`` for the gate nonlinearities and state update.
Activations (the input and each step's hidden state) are quantized per row inside the GEMM:
to 8-bit codes, or to 7-bit ones where the module's ``reduce_range`` is set (by
``quantize_dynamic`` from a qconfig whose activation observer has ``quant_max=127``, such as
``torchquant.reduce_range_dynamic_qconfig``; torch.ao's x86 dynamic range, faster on CPUs without
AVX-512 VNNI).

The modules compute in float32 and return the input's floating dtype. State dicts hold plain
tensors (int8 weights, float32 scales, int32 zero points, float32 biases).

Where autograd needs a gradient of the input or the given initial state, the values returned
are the int8 path's, bit for bit, and the gradients those of the float module (nn.LSTM etc.,
the same options) on the dequantized weights and the float biases (the straight-through
estimator, as DynamicLinear's, nn/_input_grad.py); without one, the int8 path runs alone.

    >>> qlstm = torchquant.quantize_dynamic(nn.LSTM(16, 32, 2), {nn.LSTM})
    >>> out, (h, c) = qlstm(torch.randn(5, 3, 16))
"""
import warnings
from typing import List, Optional, Tuple

import torch
from torch.compiler import is_compiling as _is_compiling
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from .. import _fastcall
from .._ops import ops
from ..qconfig import default_dynamic_qconfig
from .quantized import DynamicLinear, _seven_bit_rows
from ._state_dict import refuse_parametrized, repack_if_stale

__all__ = ["LSTM", "GRU", "LSTMCell", "GRUCell", "RNNCell"]


def _quantized_linear(weight: torch.Tensor, bias: Optional[torch.Tensor], qconfig, name: str) -> DynamicLinear:
    """A DynamicLinear holding ``weight`` [out, in] (and ``bias``) quantized by ``qconfig``'s
    weight observer."""
    out_f, in_f = weight.shape
    lin = nn.Linear(in_f, out_f, bias=bias is not None, device="meta")
    lin.weight = nn.Parameter(weight.detach().float(), requires_grad=False)
    if bias is not None:
        lin.bias = nn.Parameter(bias.detach().float(), requires_grad=False)
    lin.qconfig = qconfig
    return DynamicLinear.from_float(lin, name=name)


def _linear_args(q: DynamicLinear):
    # (a KeyError of a buffer read: one that register_parametrization moved, refused by name)
    try:
        w0 = q._buffers["qweight"]
        if w0 is not q._tq_src0 or (q._tq_v0 is not None and not _is_compiling() and w0._version != q._tq_v0):
            repack_if_stale(q)
        b = q._buffers
        return b["_packed_weight"], b["_col_sums"], b["weight_scale"], b["bias"]
    except KeyError as e:
        refuse_parametrized(q, e)
        raise


def _linear(x: torch.Tensor, args, reduce_range: bool) -> torch.Tensor:
    w, cs, s, bias = args
    if _fastcall.usable_dynamic(x, w, cs, s, bias) and type(reduce_range) is bool:
        return _fastcall.linear_dynamic(x, w, cs, s, bias, False, reduce_range)
    return ops.linear_dynamic.default(x, w, cs, s, bias, False, reduce_range)


class _StraightThrough(torch.autograd.Function):
    """``value`` (the int8 result, as it is) in forward; in backward, the gradient goes to
    ``reference`` (the float module's result on the dequantized weights) as if it had been
    returned. Unlike ``reference + (value - reference).detach()``, the value is kept bit for bit.
    (A copy, not a view of ``value``: the caller may change the result in place, as the float
    module's.)"""

    generate_vmap_rule = True

    @staticmethod
    def forward(reference: torch.Tensor, value: torch.Tensor):
        return value.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _wants_grad(*tensors) -> bool:
    """Whether autograd needs a gradient of the input or the given initial state (a Tensor, a
    PackedSequence, a tuple of them, or None); as ``needs_input_grad`` (nn/_input_grad.py), not
    under torch.jit.trace."""
    if not torch.is_grad_enabled():
        return False
    for t in tensors:
        if isinstance(t, PackedSequence):
            t = t.data
        if isinstance(t, (tuple, list)):
            if any(isinstance(u, torch.Tensor) and u.requires_grad for u in t):
                return not torch.jit.is_tracing()
        elif isinstance(t, torch.Tensor) and t.requires_grad:
            return not torch.jit.is_tracing()
    return False


def _bias_of(q: DynamicLinear) -> Optional[torch.Tensor]:
    try:
        return q._buffers["bias"]
    except KeyError as e:  # (a parametrized buffer)
        refuse_parametrized(q, e)
        raise


def _qconfig_of(mod):
    qc = getattr(mod, "qconfig", None)
    return qc if qc is not None else default_dynamic_qconfig


class _ReduceRange:
    """``reduce_range``: the rows (input and hidden state) are quantized to 7-bit codes, [0, 127]
    (as ``DynamicLinear.reduce_range``): set by ``from_float`` from the qconfig, a runtime choice
    that is not part of the state dict."""

    reduce_range = False

    def _reduce_range_repr(self) -> str:
        return ", reduce_range=True" if self.reduce_range else ""


def _check_state(module, state, x):
    """An initial state must be a floating-point tensor on the input's device (the float modules
    refuse the rest too; a .float() would take an integer or complex state silently, and a state
    on another device would be reported by a kernel under an argument name the user never gave)."""
    if not isinstance(state, torch.Tensor):
        raise TypeError(f"{module._get_name()}: argument 'hx' must hold Tensors, got {type(state).__name__}")
    if not state.is_floating_point():
        raise TypeError(f"{module._get_name()}: argument 'hx' must be a floating-point tensor, got {state.dtype}")
    if state.device != x.device:
        raise RuntimeError(f"Input and hidden tensors are not at the same device, found input tensor at {x.device} "
                           f"and hidden tensor at {state.device}")


def _check_input_device(x: torch.Tensor, q: DynamicLinear) -> None:
    """The input must be on the weights' device (torch's message: a kernel would name its own
    arguments, 'x' and 'w_packed')."""
    w = q._buffers.get("_packed_weight")
    if w is not None and w.device != x.device:
        raise RuntimeError(f"Input and parameter tensors are not at the same device, found input tensor at {x.device} "
                           f"and parameter tensor at {w.device}")


def _state_pair(module, hx):
    """An LSTM / LSTMCell state: (h_0, c_0), a tuple or list of two Tensors; its entries."""
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        if isinstance(hx, (tuple, list)):
            what = "tensor" if all(isinstance(t, torch.Tensor) for t in hx) else "element"
            got = f"a {type(hx).__name__} of {len(hx)} {what}{'' if len(hx) == 1 else 's'}"
        else:
            got = type(hx).__name__
        raise TypeError(f"{module._get_name()}: argument 'hx' must be a tuple (h_0, c_0), got {got}")
    for i, t in enumerate(hx):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{module._get_name()}: argument 'hx[{i}]' must be a Tensor, got {type(t).__name__}")
    return hx[0], hx[1]


def _check_size(name: str, value, allow_zero: bool = False) -> None:
    """A size argument of a constructor: an int, positive (nn.RNNBase's messages), or >= 0 for a
    cell's (nn.RNNCellBase takes an empty one)."""
    if not isinstance(value, int):
        raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
    if allow_zero and value < 0:
        raise ValueError(f"{name} must be non-negative, got {value}")
    if not allow_zero and value <= 0:
        raise ValueError(f"{name} must be greater than zero")


class _RNNBase(_ReduceRange, nn.Module):
    _mode = ""
    _gates = 1

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, dtype=torch.qint8):
        super().__init__()
        if dtype != torch.qint8:
            raise ValueError(f"{self._mode}: torchquant's dynamic recurrent modules support dtype=torch.qint8, got {dtype}")
        # nn.RNNBase's checks, in its order and with its messages (num_layers' and proj_size's types: ours)
        if proj_size and self._mode != "LSTM":
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1 or isinstance(dropout, bool):
            raise ValueError("dropout should be a number in range [0, 1] representing the probability of an "
                             "element being zeroed")
        if not isinstance(bias, bool):
            raise TypeError(f"bias should be of type bool, got: {type(bias).__name__}")
        if not isinstance(batch_first, bool):
            raise TypeError(f"batch_first should be of type bool, got: {type(batch_first).__name__}")
        _check_size("input_size", input_size)
        _check_size("hidden_size", hidden_size)
        _check_size("num_layers", num_layers)
        if not isinstance(proj_size, int):
            raise TypeError(f"proj_size should be of type int, got: {type(proj_size).__name__}")
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable projections")
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size, self.dtype = bidirectional, proj_size, dtype
        self.num_directions = 2 if bidirectional else 1
        out = proj_size or hidden_size
        g = self._gates * hidden_size
        for layer in range(num_layers):
            in_l = input_size if layer == 0 else out * self.num_directions
            for sfx in self._suffixes():
                w_ih, w_hh = torch.zeros(g, in_l), torch.zeros(g, out)
                b = torch.zeros(g) if bias else None
                qc = default_dynamic_qconfig
                self.add_module(f"ih_l{layer}{sfx}", _quantized_linear(w_ih, b, qc, "weight_ih"))
                self.add_module(f"hh_l{layer}{sfx}", _quantized_linear(w_hh, b, qc, "weight_hh"))
                if proj_size:
                    self.add_module(f"hr_l{layer}{sfx}",
                                    _quantized_linear(torch.zeros(proj_size, hidden_size), None, qc, "weight_hr"))

    def _suffixes(self):
        return ["", "_reverse"] if self.bidirectional else [""]

    def flatten_parameters(self) -> None:
        """No-op, as torch.ao's: the weights are packed once, at construction and on every move."""

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s + ", dtype=torch.qint8" + self._reduce_range_repr()

    def _get_name(self):
        return "DynamicQuantized" + self._mode

    @classmethod
    def from_float(cls, mod, name: Optional[str] = None, use_precomputed_fake_quant: bool = False):
        """Quantizes a float ``nn.LSTM`` / ``nn.GRU``: each weight matrix int8 per output channel
        (the qconfig's weight observer, ``default_dynamic_qconfig`` without one)."""
        float_cls = getattr(nn, cls._mode)
        if type(mod) is not float_cls and not isinstance(mod, float_cls):
            raise TypeError(f"{cls.__name__}.from_float expects an nn.{cls._mode}, got {type(mod).__name__}")
        kwargs = dict(num_layers=mod.num_layers, bias=mod.bias, batch_first=mod.batch_first, dropout=mod.dropout,
                      bidirectional=mod.bidirectional)
        if cls._mode == "LSTM":
            kwargs["proj_size"] = mod.proj_size
        q = cls(mod.input_size, mod.hidden_size, **kwargs)
        qc = _qconfig_of(mod)
        q.reduce_range = _seven_bit_rows(mod)
        at = f"{name}." if name and name != type(mod).__name__ else ""  # (a bare root is named by its type)  # errors name the weight as the float model's state dict does
        for layer in range(mod.num_layers):
            for sfx in q._suffixes():
                p = lambda n: getattr(mod, f"{n}_l{layer}{sfx}")  # noqa: E731
                b_ih = p("bias_ih") if mod.bias else None
                b_hh = p("bias_hh") if mod.bias else None
                setattr(q, f"ih_l{layer}{sfx}",
                        _quantized_linear(p("weight_ih"), b_ih, qc, f"{at}weight_ih_l{layer}{sfx}"))
                setattr(q, f"hh_l{layer}{sfx}",
                        _quantized_linear(p("weight_hh"), b_hh, qc, f"{at}weight_hh_l{layer}{sfx}"))
                if getattr(mod, "proj_size", 0):
                    setattr(q, f"hr_l{layer}{sfx}",
                            _quantized_linear(p("weight_hr"), None, qc, f"{at}weight_hr_l{layer}{sfx}"))
        q.train(mod.training)
        dev = next(iter(mod.parameters())).device
        return q.to(dev)

    # ---- forward
    def _check_hidden(self, hx: torch.Tensor, expected: Tuple[int, ...], what: str) -> None:
        if tuple(hx.shape) != expected:
            raise RuntimeError(f"Expected {what} size {expected}, got {list(hx.shape)}")

    def _step(self, ig, hg, state):
        raise NotImplementedError

    def forward(self, input, hx=None):
        if _wants_grad(input, hx):
            return self._forward_with_grad(input, hx)
        return self._forward_int8(input, hx)

    def _forward_with_grad(self, input, hx):
        """Training through the layer (the input or the initial state requires grad): the int8
        result, bit for bit, with the gradient of the float module (nn.LSTM / nn.GRU, the same
        options) on the dequantized weights and the float biases (the straight-through estimator
        for the dynamic quantization of the rows)."""
        if not isinstance(input, (torch.Tensor, PackedSequence)):
            return self._forward_int8(input, hx)  # (its error)
        dropout = self.dropout and self.training and self.num_layers > 1
        dev = input.data.device if isinstance(input, PackedSequence) else input.device
        if dropout:  # the float module draws its dropout masks from the RNG state the int8 path drew from
            rng = torch.get_rng_state() if dev.type == "cpu" else torch.get_device_module(dev.type).get_rng_state(dev)
        with torch.no_grad():
            q_out, q_hx = self._forward_int8(input, hx)
        if dropout:
            fork = [] if dev.type == "cpu" else [dev]
            with torch.random.fork_rng(devices=fork, device_type=dev.type):
                if dev.type == "cpu":
                    torch.set_rng_state(rng)
                else:
                    torch.get_device_module(dev.type).set_rng_state(rng, dev)
                f_out, f_hx = self._float_forward(input, hx)
        else:
            f_out, f_hx = self._float_forward(input, hx)
        if isinstance(q_out, PackedSequence):
            out = PackedSequence(_StraightThrough.apply(f_out.data.to(q_out.data.dtype), q_out.data),
                                 q_out.batch_sizes, q_out.sorted_indices, q_out.unsorted_indices)
        else:
            out = _StraightThrough.apply(f_out.to(q_out.dtype), q_out)
        if self._mode == "LSTM":
            states = tuple(_StraightThrough.apply(f.to(q.dtype), q) for f, q in zip(f_hx, q_hx))
            return out, states
        return out, _StraightThrough.apply(f_hx.to(q_hx.dtype), q_hx)

    def _float_forward(self, input, hx):
        """The float module (float32) on the dequantized weights: its output and state."""
        kw = dict(num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first, dropout=self.dropout,
                  bidirectional=self.bidirectional, device="meta")
        if self._mode == "LSTM":
            kw["proj_size"] = self.proj_size
        with warnings.catch_warnings():  # (nn.LSTM's warning for dropout with one layer: ours said nothing)
            warnings.simplefilter("ignore")
            m = getattr(nn, self._mode)(self.input_size, self.hidden_size, **kw)
        m.train(self.training)
        params = {}
        for layer in range(self.num_layers):
            for sfx in self._suffixes():
                for kind in ("ih", "hh") + (("hr",) if self.proj_size else ()):
                    q = self._modules[f"{kind}_l{layer}{sfx}"]
                    params[f"weight_{kind}_l{layer}{sfx}"] = q._float_weight()
                    if kind != "hr" and self.bias:
                        params[f"bias_{kind}_l{layer}{sfx}"] = _bias_of(q)
        if isinstance(input, PackedSequence):
            x = PackedSequence(input.data.float(), input.batch_sizes, input.sorted_indices, input.unsorted_indices)
        else:
            x = input.float()
        if hx is not None:
            hx = tuple(t.float() for t in hx) if self._mode == "LSTM" else hx.float()
        return torch.func.functional_call(m, params, (x, hx) if hx is not None else (x,))

    def _forward_int8(self, input, hx=None):
        is_packed = isinstance(input, PackedSequence)
        if is_packed:
            x, batch_sizes, sorted_indices, unsorted_indices = input
            batch_sizes_l = batch_sizes.tolist()
            max_batch = batch_sizes_l[0] if batch_sizes_l else 0
            batched = True
        else:
            x = input
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{self._get_name()}: argument 'input' must be a Tensor or a PackedSequence, "
                                f"got {type(x).__name__}")
            if x.dim() not in (2, 3):
                raise ValueError(f"{self._mode}: Expected input to be 2D or 3D, got {x.dim()}D instead")
            batched = x.dim() == 3
            if not batched:
                x = x.unsqueeze(1)
            elif self.batch_first:
                x = x.transpose(0, 1)
            sorted_indices = unsorted_indices = None
            max_batch = x.shape[1]
        if not x.is_floating_point():
            raise TypeError(f"{self._get_name()}: argument 'input' must be a floating-point tensor, got {x.dtype}")
        if x.shape[-1] != self.input_size:
            raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                               f"got {x.shape[-1]}")
        if x.shape[0] == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        _check_input_device(x, self._modules["ih_l0"])
        out_dtype = x.dtype
        x = x.float()
        h0, c0 = self._initial_state(hx, max_batch, batched, x, sorted_indices)

        D, L = self.num_directions, self.num_layers
        h_n: List[torch.Tensor] = []
        c_n: List[torch.Tensor] = []
        layer_in = x
        for layer in range(L):
            outs = []
            for d, sfx in enumerate(self._suffixes()):
                k = layer * D + d
                ih = _linear_args(self._modules[f"ih_l{layer}{sfx}"])
                hh = _linear_args(self._modules[f"hh_l{layer}{sfx}"])
                hr = _linear_args(self._modules[f"hr_l{layer}{sfx}"]) if self.proj_size else None
                igates = _linear(layer_in, ih, self.reduce_range)  # the whole sequence in one call
                c_k = c0[k] if c0 is not None else None
                if is_packed:
                    out, hk, ck = self._run_packed(igates, batch_sizes_l, h0[k], c_k, hh, hr, reverse=d == 1)
                else:
                    out, hk, ck = self._run_padded(igates, h0[k], c_k, hh, hr, reverse=d == 1)
                outs.append(out)
                h_n.append(hk)
                if ck is not None:
                    c_n.append(ck)
            layer_in = outs[0] if D == 1 else torch.cat(outs, -1)
            if self.dropout and self.training and layer < L - 1:
                layer_in = F.dropout(layer_in, self.dropout, True)
        h = torch.stack(h_n).to(out_dtype)
        c = torch.stack(c_n).to(out_dtype) if c_n else None
        out = layer_in.to(out_dtype)
        if is_packed:
            if unsorted_indices is not None:
                h = h.index_select(1, unsorted_indices)
                c = c.index_select(1, unsorted_indices) if c is not None else None
            output = PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices)
        else:
            if not batched:
                out, h = out.squeeze(1), h.squeeze(1)
                c = c.squeeze(1) if c is not None else None
            elif self.batch_first:
                out = out.transpose(0, 1)
            output = out
        return output, ((h, c) if self._mode == "LSTM" else h)

    def _initial_state(self, hx, batch, batched, x, sorted_indices):
        D, L, H = self.num_directions, self.num_layers, self.hidden_size
        out = self.proj_size or H
        h_shape, c_shape = (L * D, batch, out), (L * D, batch, H)
        if hx is None:
            h0 = torch.zeros(h_shape, device=x.device)
            c0 = torch.zeros(c_shape, device=x.device) if self._mode == "LSTM" else None
            return h0, c0
        if self._mode == "LSTM":
            h0, c0 = _state_pair(self, hx)
        else:
            if not isinstance(hx, torch.Tensor):
                raise TypeError(f"{self._get_name()}: argument 'hx' must be a Tensor, got {type(hx).__name__}")
            h0, c0 = hx, None
        for st in (h0, c0):
            if st is not None:
                _check_state(self, st, x)
        want = 3 if batched else 2
        if h0.dim() != want or (c0 is not None and c0.dim() != want):
            # torch's messages (LSTM names both states)
            kind = "batched 3-D" if batched else "unbatched 2-D"
            if c0 is None:
                raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got {h0.dim()}-D tensor")
            raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D but got ({h0.dim()}-D, "
                               f"{c0.dim()}-D) tensors")
        if not batched:
            h0 = h0.unsqueeze(1)
            c0 = c0.unsqueeze(1) if c0 is not None else None
        if sorted_indices is not None:
            h0 = h0.index_select(1, sorted_indices)
            c0 = c0.index_select(1, sorted_indices) if c0 is not None else None
        self._check_hidden(h0, h_shape, "hidden[0]" if c0 is not None else "hidden")
        if c0 is not None:
            self._check_hidden(c0, c_shape, "hidden[1]")
        return h0.float().contiguous(), (c0.float().contiguous() if c0 is not None else None)

    def _cell(self, ig, h, c, hh, hr):
        hg = _linear(h, hh, self.reduce_range)
        if self._mode == "LSTM":
            h, c = ops.lstm_cell_update.default(ig, hg, c)
            if hr is not None:
                h = _linear(h, hr, self.reduce_range)
            return h, c
        return ops.gru_cell_update.default(ig, hg, h), None

    def _run_padded(self, igates, h, c, hh, hr, reverse):
        # The time loop in one op (csrc/rnn_layer.cpp): the same calls as _cell's, bit for bit.
        if self._mode == "LSTM":
            return ops.lstm_layer_dynamic.default(igates, h, c, *hh, *(hr[:3] if hr is not None else (None,) * 3),
                                                  reverse, self.reduce_range)
        if self._mode == "GRU":
            out, h = ops.gru_layer_dynamic.default(igates, h, *hh, reverse, self.reduce_range)
            return out, h, None
        return self._run_padded_steps(igates, h, c, hh, hr, reverse)

    def _run_padded_steps(self, igates, h, c, hh, hr, reverse):
        T = igates.shape[0]
        hs = [None] * T
        for t in (range(T - 1, -1, -1) if reverse else range(T)):
            h, c = self._cell(igates[t], h, c, hh, hr)
            hs[t] = h
        out = torch.stack(hs) if T else igates.new_zeros((0, h.shape[0], h.shape[1]))
        return out, h, c

    def _run_packed(self, igates, batch_sizes, h0, c0, hh, hr, reverse):
        # Rows of step t are igates[offsets[t] : offsets[t] + batch_sizes[t]]; the batch only
        # shrinks over time, so a sequence that ends leaves its final state behind.
        T = len(batch_sizes)
        offsets = [0] * (T + 1)
        for t, b in enumerate(batch_sizes):
            offsets[t + 1] = offsets[t] + b
        hs = [None] * T
        if not reverse:
            h, c = h0, c0
            h_last, c_last = [], []
            for t in range(T):
                b = batch_sizes[t]
                if b < h.shape[0]:
                    h_last.append(h[b:])
                    h = h[:b]
                    if c is not None:
                        c_last.append(c[b:])
                        c = c[:b]
                h, c = self._cell(igates[offsets[t]:offsets[t + 1]], h, c, hh, hr)
                hs[t] = h
            h_last.append(h)
            h_n = torch.cat(h_last[::-1], 0)
            c_n = None
            if c is not None:
                c_last.append(c)
                c_n = torch.cat(c_last[::-1], 0)
        else:
            h, c = h0[:0], (c0[:0] if c0 is not None else None)
            for t in range(T - 1, -1, -1):
                b = batch_sizes[t]
                if b > h.shape[0]:
                    h = torch.cat([h, h0[h.shape[0]:b]], 0)
                    if c is not None:
                        c = torch.cat([c, c0[c.shape[0]:b]], 0)
                h, c = self._cell(igates[offsets[t]:offsets[t + 1]], h, c, hh, hr)
                hs[t] = h
            h_n, c_n = h, c
        out = torch.cat(hs, 0) if T else igates.new_zeros((0, h0.shape[1]))
        return out, h_n, c_n


class LSTM(_RNNBase):
    """Dynamic int8 ``nn.LSTM`` (torch.ao.nn.quantized.dynamic.LSTM): float in, float out;
    every option of nn.LSTM, including ``proj_size`` and PackedSequence input.

    >>> q = LSTM.from_float(nn.LSTM(16, 32, num_layers=2, bidirectional=True))
    >>> out, (h, c) = q(torch.randn(7, 4, 16))
    """

    _mode = "LSTM"
    _gates = 4


class GRU(_RNNBase):
    """Dynamic int8 ``nn.GRU`` (torch.ao.nn.quantized.dynamic.GRU): float in, float out; every
    option of nn.GRU, including PackedSequence input.

    >>> q = GRU.from_float(nn.GRU(16, 32, batch_first=True))
    >>> out, h = q(torch.randn(4, 7, 16))
    """

    _mode = "GRU"
    _gates = 3


class _CellBase(_ReduceRange, nn.Module):
    _mode = ""
    _gates = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 dtype=torch.qint8):
        super().__init__()
        if dtype != torch.qint8:
            raise ValueError(f"{self._mode}: torchquant's dynamic recurrent cells support dtype=torch.qint8, got {dtype}")
        _check_size("input_size", input_size, allow_zero=True)
        _check_size("hidden_size", hidden_size, allow_zero=True)
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity: {nonlinearity}")
        if nonlinearity != "tanh" and self._mode != "RNNCell":  # LSTM / GRU gates have fixed functions
            raise ValueError(f"{self._mode} has no nonlinearity to choose (argument 'nonlinearity' is RNNCell's), "
                             f"got {nonlinearity!r}")
        self.input_size, self.hidden_size, self.bias, self.nonlinearity = input_size, hidden_size, bias, nonlinearity
        self.dtype = dtype
        g = self._gates * hidden_size
        b = torch.zeros(g) if bias else None
        self.ih = _quantized_linear(torch.zeros(g, input_size), b, default_dynamic_qconfig, "weight_ih")
        self.hh = _quantized_linear(torch.zeros(g, hidden_size), b, default_dynamic_qconfig, "weight_hh")

    def _get_name(self):
        return "DynamicQuantized" + self._mode

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if self._mode == "RNNCell" and self.nonlinearity != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        return s + ", dtype=torch.qint8" + self._reduce_range_repr()

    @classmethod
    def from_float(cls, mod, name: Optional[str] = None, use_precomputed_fake_quant: bool = False):
        """Quantizes a float ``nn.LSTMCell`` / ``nn.GRUCell`` / ``nn.RNNCell``."""
        float_cls = getattr(nn, cls._mode)
        if not isinstance(mod, float_cls):
            raise TypeError(f"{cls.__name__}.from_float expects an nn.{cls._mode}, got {type(mod).__name__}")
        kwargs = {"nonlinearity": mod.nonlinearity} if cls._mode == "RNNCell" else {}
        q = cls(mod.input_size, mod.hidden_size, mod.bias, **kwargs)
        qc = _qconfig_of(mod)
        q.reduce_range = _seven_bit_rows(mod)
        at = f"{name}." if name and name != type(mod).__name__ else ""  # (a bare root is named by its type)
        q.ih = _quantized_linear(mod.weight_ih, mod.bias_ih if mod.bias else None, qc, f"{at}weight_ih")
        q.hh = _quantized_linear(mod.weight_hh, mod.bias_hh if mod.bias else None, qc, f"{at}weight_hh")
        q.train(mod.training)
        return q.to(mod.weight_ih.device)

    def _float_args(self):
        """(w_ih, w_hh, b_ih, b_hh) of the float cell: the dequantized weights (int8 codes times
        their per-channel scales), the float biases (None without)."""
        return self.ih._float_weight(), self.hh._float_weight(), _bias_of(self.ih), _bias_of(self.hh)

    def _prepare(self, input, hx):
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"{self._get_name()}: argument 'input' must be a Tensor, got {type(input).__name__}")
        if input.dim() not in (1, 2):
            raise ValueError(f"{self._mode}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        # the state's structure and rank (torch's checks and messages, before the input's others)
        if hx is None:
            hxs = (None,) * self._n_states
        elif self._n_states == 2:
            hxs = _state_pair(self, hx)
            for i, s in enumerate(hxs):
                if s.dim() not in (1, 2):
                    raise ValueError(f"{self._mode}: Expected hx[{i}] to be 1D or 2D, got {s.dim()}D instead")
        else:
            if not isinstance(hx, torch.Tensor):
                raise TypeError(f"{self._get_name()}: argument 'hx' must be a Tensor, got {type(hx).__name__}")
            if hx.dim() not in (1, 2):
                raise ValueError(f"{self._mode}: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
            hxs = (hx,)
        if not input.is_floating_point():
            raise TypeError(f"{self._get_name()}: argument 'input' must be a floating-point tensor, got {input.dtype}")
        if input.shape[-1] != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.shape[-1]} expected {self.input_size}")
        _check_input_device(input, self._modules["ih"])  # (no nn.Module.__getattr__ per step)
        batched = input.dim() == 2
        x = (input if batched else input.unsqueeze(0)).float()
        states = []
        for i, s in enumerate(hxs):
            if s is None:
                s = torch.zeros(x.shape[0], self.hidden_size, device=x.device)
            else:
                _check_state(self, s, x)
                s = s if batched else s.unsqueeze(0)
                if s.dim() == 2 and s.shape[0] != x.shape[0]:  # torch's messages, then ours for the rank
                    raise RuntimeError(f"Input batch size {x.shape[0]} doesn't match hidden{i} batch size {s.shape[0]}")
                if s.dim() == 2 and s.shape[1] != self.hidden_size:
                    raise RuntimeError(f"hidden{i} has inconsistent hidden_size: got {s.shape[1]}, expected "
                                       f"{self.hidden_size}")
                if tuple(s.shape) != (x.shape[0], self.hidden_size):
                    raise RuntimeError(f"hidden{i if self._n_states > 1 else ''} has inconsistent hidden_size or "
                                       f"batch: got {list(s.shape if batched else s.shape[1:])}, expected "
                                       f"{[x.shape[0], self.hidden_size] if batched else [self.hidden_size]}")
                s = s.float().contiguous()
            states.append(s)
        return x, states, batched, input.dtype

    _n_states = 1


class LSTMCell(_CellBase):
    """Dynamic int8 ``nn.LSTMCell``: returns (h', c').

    >>> h, c = LSTMCell.from_float(nn.LSTMCell(16, 32))(torch.randn(4, 16))
    """

    _mode = "LSTMCell"
    _gates = 4
    _n_states = 2

    def forward(self, input, hx=None):
        x, (h, c), batched, dt = self._prepare(input, hx)
        if _wants_grad(x, h, c):  # the int8 values, the float cell's gradient (_CellBase._float_args)
            with torch.no_grad():
                hq, cq = self._int8(x, h, c)
            hf, cf = torch.lstm_cell(x, (h, c), *self._float_args())
            h, c = _StraightThrough.apply(hf, hq), _StraightThrough.apply(cf, cq)
        else:
            h, c = self._int8(x, h, c)
        h, c = h.to(dt), c.to(dt)
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))

    def _int8(self, x, h, c):
        ig = _linear(x, _linear_args(self.ih), self.reduce_range)
        hg = _linear(h, _linear_args(self.hh), self.reduce_range)
        return ops.lstm_cell_update.default(ig, hg, c)


class GRUCell(_CellBase):
    """Dynamic int8 ``nn.GRUCell``.

    >>> h = GRUCell.from_float(nn.GRUCell(16, 32))(torch.randn(4, 16))
    """

    _mode = "GRUCell"
    _gates = 3

    def forward(self, input, hx=None):
        x, (h,), batched, dt = self._prepare(input, hx)
        if _wants_grad(x, h):
            with torch.no_grad():
                hq = self._int8(x, h)
            h = _StraightThrough.apply(torch.gru_cell(x, h, *self._float_args()), hq)
        else:
            h = self._int8(x, h)
        h = h.to(dt)
        return h if batched else h.squeeze(0)

    def _int8(self, x, h):
        ig = _linear(x, _linear_args(self.ih), self.reduce_range)
        hg = _linear(h, _linear_args(self.hh), self.reduce_range)
        return ops.gru_cell_update.default(ig, hg, h)


class RNNCell(_CellBase):
    """Dynamic int8 ``nn.RNNCell`` (tanh or relu): h' = act(W_ih x + b_ih + W_hh h + b_hh).

    >>> h = RNNCell.from_float(nn.RNNCell(16, 32, nonlinearity="relu"))(torch.randn(4, 16))
    """

    _mode = "RNNCell"
    _gates = 1

    def forward(self, input, hx=None):
        x, (h,), batched, dt = self._prepare(input, hx)
        if _wants_grad(x, h):
            with torch.no_grad():
                hq = self._int8(x, h)
            cell = torch.rnn_tanh_cell if self.nonlinearity == "tanh" else torch.rnn_relu_cell
            h = _StraightThrough.apply(cell(x, h, *self._float_args()), hq)
        else:
            h = self._int8(x, h)
        h = h.to(dt)
        return h if batched else h.squeeze(0)

    def _int8(self, x, h):
        rr = self.reduce_range
        pre = _linear(x, _linear_args(self.ih), rr) + _linear(h, _linear_args(self.hh), rr)
        return torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre)

"""Whole-model int4 weight-only quantization: :func:`quantize_weight_only`.

Every ``nn.Linear`` and subclass keeping its forward (as torchquant's ``quantize_dynamic``; not
``nn.MultiheadAttention``'s ``out_proj``, which its owner reads directly) and every Hugging Face
``Conv1D`` (GPT-2's layers, turned into the equivalent Linear first) is replaced by
:class:`torchquant.nn.quantized.LinearWeightOnlyInt4` (bits=4) or by torchquant's int8
``DynamicLinear`` (bits=8, per output channel). The 4-bit values come from round-to-nearest,
GPTQ or AWQ; the two calibrated methods visit the layers in the order the model runs them and
gather one layer's statistics at a time (forward hooks on the calibration batches), with the
layers before it already quantized, so that each layer corrects for the error of those before
it and memory holds one layer's Hessian (GPTQ) or input rows (AWQ) at a time.
"""
import contextlib
import copy
import math
import warnings
from collections.abc import Mapping
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ._stack import user_stacklevel
from .int4 import awq as _awq
from .int4 import gptq as _gptq
from .int4.format import (check_bits, check_group_size, check_symmetric, choose_group_qparams,
                          dequantize_groups, pack_int4, quantize_groups, unpack_int4)
from .nn.quantized_int4 import LinearWeightOnlyInt4
from .nn._compact import compact
from .nn._state_dict import _version_of

__all__ = ["quantize_weight_only"]

_METHODS = ("rtn", "gptq", "awq")


class _Stop(Exception):
    pass


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency; stay usable without it
        return items
    return tqdm(items, desc=desc, unit="layer")


def _run(model: nn.Module, batch):
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    if isinstance(batch, Mapping):  # also a tokenizer's BatchEncoding / an image processor's BatchFeature (UserDicts)
        return model(**batch)
    return model(batch)


def _calib_batches(calib_data, method: str) -> List[Any]:
    if calib_data is None:
        raise ValueError(f"method={method!r} needs calib_data: an iterable of input batches (or one tensor)")
    # One tensor, or one mapping (a tokenizer's output: model(**b)), is one batch.
    if isinstance(calib_data, (torch.Tensor, Mapping)):
        batches = [calib_data]
    elif isinstance(calib_data, (str, bytes)) or not hasattr(calib_data, "__iter__"):
        raise TypeError(f"argument 'calib_data' must be a tensor, a dict of keyword arguments or an iterable of "
                        f"batches, got {type(calib_data).__name__}")
    elif isinstance(calib_data, tuple) and len(calib_data) > 1 and all(isinstance(t, torch.Tensor) for t in calib_data):
        # (ids, mask): one batch of two arguments (model(*b), as report reads it) or two
        # batches? Running the mask as token ids would calibrate on it (torchquant.calibrate
        # refuses the same tuple).
        raise TypeError(f"quantize_weight_only: argument 'calib_data' is a tuple of {len(calib_data)} tensors, "
                        "which reads both as one batch of arguments (model(*b)) and as a sequence of batches: pass "
                        "a list, [(ids, mask)] for one batch or [x1, x2, ...] for several (x.split(n) and x.chunk(n) "
                        "give tuples: list(x.split(n)))")
    else:
        batches = list(calib_data)
    if not batches:
        raise ValueError(f"argument 'calib_data' holds no batches (method={method!r} needs some)")
    return batches


def _describe_batch(b) -> str:
    def one(t):
        if isinstance(t, torch.Tensor):
            rng = ""
            if t.numel() and not t.is_complex() and t.dtype != torch.bool and not t.is_meta:
                lo, hi = torch.aminmax(t.detach().reshape(-1))
                rng = f", values in [{lo.item()}, {hi.item()}]"
            return f"Tensor(shape={tuple(t.shape)}, dtype={t.dtype}{rng})"
        return type(t).__name__
    if isinstance(b, Mapping):
        return "{" + ", ".join(f"{k!r}: {one(v)}" for k, v in b.items()) + "}"
    if isinstance(b, (tuple, list)):
        return type(b).__name__ + "(" + ", ".join(one(v) for v in b) + ")"
    return one(b)


def _run_batch(model: nn.Module, batch, i: int):
    """_run, where an error (the model's own) also says which calib_data batch it was given: a
    batch of the wrong kind (strings, ids past the vocabulary) fails deep inside the model."""
    try:
        return _run(model, batch)
    except _Stop:
        raise
    except Exception as exc:
        if hasattr(exc, "add_note"):  # Python 3.11+
            try:
                what = _describe_batch(batch)
            except Exception:  # noqa: BLE001 — a batch even aminmax cannot read: the model's error stands
                what = type(batch).__name__
            exc.add_note(f"quantize_weight_only: raised running the model on calib_data batch {i}: {what}")
        raise


def _forward_all(model, batches, stop_on: Optional[nn.Module] = None):
    with torch.no_grad():
        for i, b in enumerate(batches):
            try:
                _run_batch(model, b, i)
            except _Stop:
                pass


def _execution_order(model, linears: Dict[str, nn.Linear], batches,
                     shared: Optional[dict] = None) -> Tuple[List[str], Dict[str, int]]:
    """Names of the Linears in the order the first batch calls them, and how often each is called.
    ``shared`` (a dict) receives, for each Linear called right after another Linear's call on the
    very same input tensor (an attention block's k and v after q, an MLP's up after gate), that
    other Linear's name."""
    order, calls = [], {}
    handles = []
    # the previous Linear call's input (only that one is kept alive), its version then (an input
    # changed in place between the calls, `a = fc1(h); h.relu_(); b = fc2(h)`, is another input)
    # and its Linear
    last = [None, None, None]
    for name, m in linears.items():
        def hook(mod, args, kwargs, name=name):
            calls[name] = calls.get(name, 0) + 1
            x = args[0] if args else kwargs.get("input")
            v = _version_of(x)  # (None for an inference tensor: not taken as shared)
            if name not in order:
                if (shared is not None and order and x is not None and x is last[0] and v is not None
                        and v == last[2]):
                    shared[name] = last[1]
                order.append(name)
            last[0], last[1], last[2] = x, name, v
        handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            _run_batch(model, batches[0], 0)
    finally:
        for h in handles:
            h.remove()
    never = [n for n in linears if n not in order]
    return order + never, calls


def _capture_inputs(model, batches, module: nn.Module, fn, stop: bool):
    """Runs the batches, handing each input of `module` to fn; stops each forward right after
    `module` when `stop` (nothing later can change what it sees)."""
    def hook(mod, args, kwargs):
        # nn.Linear's input, given by position or as `input=` (as the float module takes it)
        fn(args[0] if args else kwargs["input"])
        if stop:
            raise _Stop
    h = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        _forward_all(model, batches)
    finally:
        h.remove()


# ---------------------------------------------------------------- calibration by block
# GPTQ and AWQ need each Linear's inputs with the layers before it quantized. Running the whole
# model up to each Linear costs a number of forwards that grows with the square of the depth. A
# model made of a chain of blocks (an nn.ModuleList or nn.Sequential whose i-th child's hidden
# input is the (i-1)-th child's output, every other argument the same object for each block, as
# the layers of Hugging Face's and most other transformers) is calibrated as AutoGPTQ does: the
# first block's inputs are captured once per batch, each Linear's inputs come from running its
# block alone on the cached inputs, and a finished block's outputs become the next block's
# inputs. Each step computes what the full forward would, on the same values, so the result is
# the same bit for bit (tested). The chain is verified on a forward of every calibration batch;
# a model that does not verify runs whole forwards as before.


def _plain(v) -> bool:
    """An argument a block can be called with again: tensors, numbers, strings, None and tuples
    of them (not a list or dict, whose contents the model could change between blocks, nor a
    cache object)."""
    if v is None or isinstance(v, (bool, int, float, str, torch.Tensor, torch.dtype, torch.device)):
        return True
    if isinstance(v, tuple):
        return all(_plain(x) for x in v)
    return False


def _tensors(v):
    if isinstance(v, torch.Tensor):
        yield v
    elif isinstance(v, (tuple, list)):
        for x in v:
            yield from _tensors(x)


def _hidden_of(args, kwargs):
    """('arg', 0) or ('kw', 'hidden_states'): where a block's hidden input is, or None."""
    if args:
        return ("arg", 0) if isinstance(args[0], torch.Tensor) else None
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        return ("kw", "hidden_states")
    return None


def _get_hidden(slot, args, kwargs):
    return args[0] if slot[0] == "arg" else kwargs[slot[1]]


def _with_hidden(slot, args, kwargs, h):
    if slot[0] == "arg":
        return (h,) + tuple(args[1:]), kwargs
    kwargs = dict(kwargs)
    kwargs[slot[1]] = h
    return args, kwargs


def _block_output(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


# nn.Module's own bookkeeping (hooks, registries) and torchquant's per-module caches: not state
# a forward leaves behind
_MODULE_INTERNALS = frozenset(nn.Module().__dict__) | {"_tq_setting_names", "_table_cache", "_tq_packed_from", "_tq_src0",
                                                   "_tq_v0", "_tq_warned"}


def _same_value(a, b) -> bool:
    if a is b:
        return True
    return type(a) is type(b) and isinstance(a, (bool, int, float, str)) and a == b


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a holds b's values (NaN where b has NaN)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.is_floating_point or a.dtype.is_complex:
        return bool(((a == b) | (a.isnan() & b.isnan())).all())
    return torch.equal(a, b)


class _StateSnapshot:
    """What running a model could leave behind in its modules: their buffers (the tensor, its
    version and a copy of its values), their parameters (the tensor and its version) and their
    other attributes. `changed()` tells whether a forward changed any; `restore()` puts them back.
    A buffer that is an inference tensor (made under torch.inference_mode: it has no version) is
    compared by its values; a parameter that is one, by its identity only (it can be changed in
    place only inside inference mode, where no chain of blocks verifies)."""

    def __init__(self, model: nn.Module):
        self.mods = []
        for m in model.modules():
            attrs = {k: v for k, v in m.__dict__.items() if k not in _MODULE_INTERNALS}
            bufs = {k: (t, _version_of(t), t.detach().clone()) if isinstance(t, torch.Tensor) else (t, None, None)
                    for k, t in m._buffers.items()}
            params = {k: (p, _version_of(p) if p is not None else None) for k, p in m._parameters.items()}
            self.mods.append((m, attrs, bufs, params))

    @staticmethod
    def _buffer_changed(t, ver, values) -> bool:
        if values is None:  # (not a tensor)
            return False
        if ver is not None:
            return _version_of(t) != ver
        return not _same_values(t, values)

    def changed(self) -> bool:
        for m, attrs, bufs, params in self.mods:
            now = {k: v for k, v in m.__dict__.items() if k not in _MODULE_INTERNALS}
            if now.keys() != attrs.keys() or any(not _same_value(now[k], v) for k, v in attrs.items()):
                return True
            if m._buffers.keys() != bufs.keys() or m._parameters.keys() != params.keys():
                return True
            for k, (t, ver, values) in bufs.items():
                if m._buffers[k] is not t or self._buffer_changed(t, ver, values):
                    return True
            for k, (p, ver) in params.items():
                if m._parameters[k] is not p or (ver is not None and _version_of(p) != ver):
                    return True
        return False

    def restore(self) -> None:
        for m, attrs, bufs, params in self.mods:
            for k in [k for k in m.__dict__ if k not in _MODULE_INTERNALS and k not in attrs]:
                del m.__dict__[k]
            m.__dict__.update(attrs)
            for k in [k for k in m._buffers if k not in bufs]:
                del m._buffers[k]
            for k, (t, ver, values) in bufs.items():
                if self._buffer_changed(t, ver, values):
                    # (an inference tensor is written only inside inference mode)
                    with torch.no_grad(), (torch.inference_mode() if t.is_inference() else contextlib.nullcontext()):
                        t.copy_(values)
                m._buffers[k] = t
            for k, (p, _) in params.items():
                m._parameters[k] = p


class _Chain:
    """A verified chain of blocks: `container`'s children in order, the hidden input at `slot`."""

    def __init__(self, name: str, blocks: List[nn.Module], slot):
        self.name, self.blocks, self.slot = name, blocks, slot


_IMMUTABLE = "immutable"  # the version of an inference tensor outside inference mode (_Watch.hooks)


class _Watch:
    """Hooks that record one container's block calls during the forward of each calibration
    batch, to check that it is a chain in every one of them."""

    def __init__(self, name, container, linears, order):
        self.name, self.blocks = name, list(container.children())
        self.owner: Dict[str, int] = {}
        named = set(order)
        for i, b in enumerate(self.blocks):
            inside = {id(x) for x in b.modules()}
            for n, m in linears.items():
                if n in named and id(m) in inside:
                    self.owner.setdefault(n, i)
        # this batch's calls: [index, args, kwargs, (tensor, version) of the inputs, output,
        # version of the hidden input at the call, version of the output at the return]
        self.calls: List[list] = []
        self.first = None  # the first batch's (args, kwargs, output) of each block
        self.slot = None
        self.active = None
        self.ok = True

    def hooks(self, linears):
        # An inference tensor has no version. Outside inference mode (calibration data made under
        # torch.inference_mode, then used outside it) it cannot be written in place at all (torch
        # refuses), so it keeps a fixed one; inside inference mode (a call made inside it) an
        # in-place change to a block's input or output could not be seen, so such a container is
        # no verified chain (whole forwards calibrate it).
        def version(t):
            v = _version_of(t)
            return _IMMUTABLE if v is None and not torch.is_inference_mode_enabled() else v

        def versions(args, kwargs):
            return [(t, version(t)) for v in (args, tuple(kwargs.values())) for t in _tensors(v)]

        handles = []
        for i, b in enumerate(self.blocks):
            def pre(mod, args, kwargs, i=i):
                if not self.ok:
                    return
                if self.active is not None:
                    self.ok = False  # a block called inside another
                self.active = i
                slot = _hidden_of(args, kwargs)
                hv = version(_get_hidden(slot, args, kwargs)) if slot is not None else None
                inputs = versions(args, kwargs)
                if (slot is not None and hv is None) or any(v is None for _, v in inputs):
                    self.ok = False  # an inference tensor: not verifiable
                self.calls.append([i, args, kwargs, inputs, None, hv, None])

            def post(mod, args, kwargs, out):
                if not self.ok:
                    return
                self.active = None
                call = self.calls[-1]
                call[4] = out
                h = _block_output(out)
                call[6] = version(h) if h is not None else None
                if h is not None and call[6] is None:
                    self.ok = False  # an inference tensor: not verifiable
                if any(version(t) != v for t, v in call[3]):
                    self.ok = False  # changed an input in place: cached inputs could not be reused
            handles.append(b.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(b.register_forward_hook(post, with_kwargs=True))
        for n, i in self.owner.items():
            def lin_pre(mod, args, i=i):
                if self.active != i:
                    self.ok = False  # a block's Linear called outside its block
            handles.append(linears[n].register_forward_pre_hook(lin_pre))
        return handles

    def end_batch(self):
        if self.ok:
            self.ok = self._check(self.calls)
        self.calls = []
        self.active = None

    def _check(self, calls) -> bool:
        if [c[0] for c in calls] != list(range(len(self.blocks))):
            return False  # a block skipped, repeated or called out of order
        _, args0, kwargs0, _, _, _, _ = calls[0]
        slot = _hidden_of(args0, kwargs0)
        if slot is None or (self.slot is not None and slot != self.slot):
            return False

        def rest(args, kwargs):
            return ([a for j, a in enumerate(args) if not (slot[0] == "arg" and j == 0)],
                    {k: v for k, v in kwargs.items() if not (slot[0] == "kw" and k == slot[1])})
        rest0 = rest(args0, kwargs0)
        if not _plain(tuple(rest0[0])) or not _plain(tuple(rest0[1].values())):
            return False  # a cache object or another stateful argument: not safe to call again
        for prev, cur in zip(calls, calls[1:]):
            _, args, kwargs, _, _, hv, _ = cur
            if _hidden_of(args, kwargs) != slot or _get_hidden(slot, args, kwargs) is not _block_output(prev[4]):
                return False
            if hv != prev[6]:
                return False  # the previous block's output was changed in place before this block
            r = rest(args, kwargs)
            if (len(r[0]) != len(rest0[0]) or any(a is not b for a, b in zip(r[0], rest0[0]))
                    or r[1].keys() != rest0[1].keys() or any(r[1][k] is not rest0[1][k] for k in rest0[1])):
                return False
        if _block_output(calls[-1][4]) is None:
            return False
        if self.first is None:
            self.slot = slot
            self.first = [(c[1], c[2], c[4]) for c in calls]
        return True

    def chain(self) -> Optional[_Chain]:
        """The chain, if every batch verified and every block, called again alone on the first
        batch's inputs after the forwards of all batches, gives the output it gave then (a block
        that keeps state of its own, or reads state its parent sets per batch, would not)."""
        if not self.ok or self.first is None:
            return None
        try:
            with torch.no_grad():
                for block, (args, kwargs, out) in zip(self.blocks, self.first):
                    again, first = _block_output(block(*args, **kwargs)), _block_output(out)
                    if (again is None or again.shape != first.shape or again.dtype != first.dtype
                            or not torch.equal(again, first)):
                        return None
        except Exception:  # noqa: BLE001 — a block that runs only inside its model's forward
            return None
        return _Chain(self.name, self.blocks, self.slot)


def _block_plan(model, linears, order, batches) -> Dict[str, Tuple[_Chain, int]]:
    """{Linear name: (chain, block index)} for the Linears inside a verified chain of blocks (the
    outermost containers that verify on a forward of every calibration batch); {} for a model
    with none, or whose forwards change its own state (buffers, attributes: put back as they
    were, so that the whole forwards that follow see the model as they would have)."""
    watches = []
    for cname, c in model.named_modules():
        if isinstance(c, (nn.ModuleList, nn.Sequential)) and len(c) >= 2:
            w = _Watch(cname, c, linears, order)
            if w.owner:
                watches.append(w)
    if not watches:
        return {}
    snapshot = _StateSnapshot(model)
    handles = [h for w in watches for h in w.hooks(linears)]
    try:
        with torch.no_grad():
            for i, b in enumerate(batches):
                _run_batch(model, b, i)
                for w in watches:
                    w.end_batch()
    finally:
        for h in handles:
            h.remove()
    chains = {w.name: w.chain() for w in watches if w.ok}
    if snapshot.changed():
        snapshot.restore()
        return {}
    plan: Dict[str, Tuple[_Chain, int]] = {}
    taken: List[str] = []
    for w in watches:  # named_modules' order: a container before those inside it
        if any(t == "" or w.name == t or w.name.startswith(t + ".") for t in taken):
            continue
        chain = chains.get(w.name)
        if chain is None:
            continue
        taken.append(w.name)
        for n, i in w.owner.items():
            plan.setdefault(n, (chain, i))
    return plan


class _Feeder:
    """Hands a Linear's calibration inputs to fn: from its block run alone on cached inputs when
    the plan places it in a chain, else from forwards of the whole model."""

    def __init__(self, model, batches, plan, done=None):
        self.model, self.batches, self.plan = model, batches, plan
        self.chain, self.index, self.cache = None, 0, None
        self.done = done  # done(block, names of its Linears) once the block's outputs are cached

    def capture(self, name, module, fn, stop: bool):
        where = self.plan.get(name)
        if where is None:
            _capture_inputs(self.model, self.batches, module, fn, stop)
            return
        chain, j = where
        if self.chain is not chain or self.index > j:
            self._enter(chain)
        while self.index < j:
            self._advance()
        def hook(mod, args, kwargs):
            fn(args[0] if args else kwargs["input"])
            if stop:
                raise _Stop
        h = module.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with torch.no_grad():
                for args, kwargs in self.cache:
                    try:
                        chain.blocks[j](*args, **kwargs)
                    except _Stop:
                        pass
        finally:
            h.remove()

    def _enter(self, chain):
        self.chain, self.index, self.cache = None, 0, None
        cache = []
        def hook(mod, args, kwargs):
            cache.append((args, kwargs))
            raise _Stop
        h = chain.blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            _forward_all(self.model, self.batches)
        finally:
            h.remove()
        self.chain, self.cache = chain, cache

    def _advance(self):
        block, slot = self.chain.blocks[self.index], self.chain.slot
        with torch.no_grad():
            for i, (args, kwargs) in enumerate(self.cache):
                out = _block_output(block(*args, **kwargs))
                self.cache[i] = _with_hidden(slot, args, kwargs, out)
        if self.done is not None:
            self.done(block, [n for n, (c, j) in self.plan.items() if c is self.chain and j == self.index])
        self.index += 1


class _Codes:
    """int4 codes [N, K] two per byte while calibration holds them for the swap at the end (one
    per byte, they took a quarter of a float32 model's Linear weights, half of a bfloat16 one's)."""
    __slots__ = ("packed", "K")

    def __init__(self, q: torch.Tensor):
        self.packed, self.K = pack_int4(q), q.shape[1]


def _codes(q):
    """The codes [N, K] one per byte (of a _Codes or as they are)."""
    return unpack_int4(q.packed, q.K) if isinstance(q, _Codes) else q


class _StandIns:
    """While GPTQ / AWQ calibrate, each Linear already quantized computes with its dequantized
    weight (the values the int model will have: the layers after it calibrate on its output as
    the int model gives it), without a write into its float weight: the stand-in is a new tensor
    in the weight's place, the given one is put back by ``restore()`` (so that neither an
    ``inplace`` call nor the copy, which shares the given weights, needs a float copy of them).
    ``drop_block(block, names)`` lets a finished block's stand-ins go (calibration by block runs
    it no more): the given weights are back in place between calls, and hooks put the
    dequantized ones, made again, in their place for each call of the block (or of one of those
    Linears alone) that whole forwards may still make: the same values, seen by the block's code
    as before (a read of ``fc.weight`` inside the block's forward included)."""

    def __init__(self, linears: Dict[str, nn.Module], results: Dict[str, Tuple], bits: int, group_size):
        self.linears, self.results, self.bits, self.gs = linears, results, bits, group_size
        self.given: Dict[str, Any] = {}  # name -> the Linear's weight (parameter or buffer) as it was given
        self.div: Dict[str, torch.Tensor] = {}  # name -> AWQ's input scale s, where the layer keeps 1 / s
        self.dropped: set = set()
        self.hooks: List = []

    def fake(self, name: str, w: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The dequantized weight of results[name] (`w`: its group dequantization, when the caller has it)."""
        if w is None:
            q, s, z, _ = self.results[name]
            w = _fake(_codes(q), s, z, self.bits, self.gs)
        if name in self.div:
            w = w / self.div[name]
        return w.to(self.given[name].dtype)

    @staticmethod
    def _slot(lin: nn.Module) -> Dict[str, Any]:
        # (a weight registered as a buffer is replaced there)
        return lin._parameters if "weight" in lin._parameters else lin._buffers

    def _put(self, name: str, w: torch.Tensor) -> None:
        slot = self._slot(self.linears[name])
        given = self.given.setdefault(name, slot["weight"])
        slot["weight"] = nn.Parameter(w, requires_grad=given.requires_grad) if isinstance(given, nn.Parameter) else w

    def set(self, name: str, div: Optional[torch.Tensor] = None, fake: Optional[torch.Tensor] = None) -> None:
        """The Linear `name` computes with results[name] from now on (`fake`: its group
        dequantization, when the caller has it)."""
        self.given.setdefault(name, self._slot(self.linears[name])["weight"])
        if div is not None:
            self.div[name] = div
        self.dropped.discard(name)
        self._put(name, self.fake(name, fake))

    def replace_weight(self, name: str, w: torch.Tensor) -> None:
        """A float weight changed before `name` is quantized (AWQ's fold), without writing into the given one."""
        self._put(name, w)

    def _given_back(self, name: str) -> None:
        self._slot(self.linears[name])["weight"] = self.given[name]

    def drop_block(self, block: nn.Module, names: Sequence[str]) -> None:
        names = [n for n in names if n in self.results and n in self.given and n not in self.dropped]
        if not names:
            return
        for n in names:
            self._given_back(n)
        self.dropped.update(names)

        def enter(names):  # the stand-ins of those still dropped and not in place (a call inside the block's)
            put = [n for n in names if n in self.dropped and self._slot(self.linears[n])["weight"] is self.given[n]]
            for n in put:
                self._put(n, self.fake(n))
            return put

        def leave(put):
            for n in put:
                if n in self.dropped:
                    self._given_back(n)

        def hooks(mod, names):
            stack = []
            pre = mod.register_forward_pre_hook(lambda m, a: stack.append(enter(names)), prepend=True)
            post = mod.register_forward_hook(lambda m, a, y: leave(stack.pop()) if stack else None, always_call=True)
            self.hooks += [pre, post]

        hooks(block, names)
        for n in names:  # (a Linear called outside its block's forward)
            hooks(self.linears[n], [n])

    def restore(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks.clear()
        for name in self.given:
            self._given_back(name)
        self.given.clear()
        self.dropped.clear()


def _producers(model: nn.Module, names: Sequence[str]) -> Optional[Dict[str, Tuple[str, List[str]]]]:
    """For AWQ folding: {linear: (producer, [linears sharing its output])} where a Linear's input
    is the output of a LayerNorm or Linear module whose every user is one of `names` (from a
    torch.fx trace; None for a model fx cannot trace, which folds nothing)."""
    import torch.fx as fx
    snapshot = _StateSnapshot(model)  # a forward that sets attributes would leave fx's Proxies in the model
    try:
        gm = fx.symbolic_trace(model)
    except Exception:
        return None
    finally:
        if snapshot.changed():
            snapshot.restore()
    mods = dict(model.named_modules())
    holders: Dict[int, set] = {}  # parameter -> the modules holding it
    for m in model.modules():
        for t in m._parameters.values():
            if t is not None:
                holders.setdefault(id(t), set()).add(id(m))
    calls: Dict[str, int] = {}
    # the tensors the forward reads as attributes rather than through their module's call
    # (`F.linear(x, self.fc.weight)`): a scale folded into them would reach that read too (fc's
    # weight holds W * s once its 1 / s is in the LayerNorm before it)
    read = set()
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
        elif node.op == "get_attr":
            t = gm
            for part in node.target.split("."):
                t = getattr(t, part, None)
            if isinstance(t, torch.Tensor):  # (the model's own tensor: the trace shares them)
                read.add(id(t))
    wanted = set(names)
    out = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in wanted or not node.args:
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or src.op != "call_module" or calls.get(src.target) != 1:
            continue
        pm = mods.get(src.target)
        if not isinstance(pm, (nn.LayerNorm, nn.Linear)) or (isinstance(pm, nn.LayerNorm) and not pm.elementwise_affine):
            continue
        if _reparametrized(pm):  # (a scale divided into its computed weight would be dropped)
            continue
        if any(len(holders.get(id(t), ())) > 1 or id(t) in read for t in (pm.weight, getattr(pm, "bias", None))
               if t is not None):
            continue  # a weight tied to another module, or read directly: the scale would change that use too
        users = list(src.users)
        if all(u.op == "call_module" and u.target in wanted and calls.get(u.target) == 1 and len(u.args) == 1
               and u.args[0] is src and not u.kwargs and id(mods[u.target].weight) not in read for u in users):
            out[node.target] = (src.target, [u.target for u in users])
    return out


def _excluded_names(exclude) -> set:
    """`exclude` as a set of names: one name, several, or None."""
    if exclude is None or isinstance(exclude, str):
        names = [] if exclude is None else [exclude]
    elif hasattr(exclude, "__iter__") and not isinstance(exclude, (nn.Module, type, bytes, torch.Tensor)):
        names = list(exclude)
    else:
        names = [exclude]
    wrong = [n for n in names if not isinstance(n, str)]
    if wrong:
        w = wrong[0]
        what = (f"the type {w.__module__}.{w.__qualname__}" if isinstance(w, type) else
                f"a {type(w).__name__} module" if isinstance(w, nn.Module) else f"{type(w).__name__} {w!r}")
        raise TypeError(f"argument 'exclude' takes module names (qualified names as model.named_modules() gives "
                        f"them, e.g. 'lm_head' or 'model.layers.0.mlp.down_proj'), got {what}"
                        + ("; to leave every layer of a type in float, name them: [n for n, m in "
                           "model.named_modules() if isinstance(m, T)]" if isinstance(w, type) else ""))
    return set(names)


def quantize_weight_only(model: nn.Module, bits: int = 4, group_size: int = 128, method: str = "rtn",
                         calib_data: Optional[Iterable] = None, *, symmetric: bool = False,
                         inplace: bool = False, exclude: Sequence[str] = (), percdamp: float = 0.01,
                         blocksize: int = 128, act_order: bool = False, awq_grid: int = 20,
                         awq_fold: bool = True, awq_max_rows: int = 4096, cache_block_inputs: bool = True,
                         progress: bool = True) -> nn.Module:
    """Weight-only quantization of every ``nn.Linear`` of ``model`` (and of every Hugging Face
    ``transformers.pytorch_utils.Conv1D``, GPT-2's Linear with its weight stored transposed):
    float activations in and out.

    ``bits=4``: int4 in groups of ``group_size`` input channels (float32 scale and 4-bit zero
    point per group; ``docs/quantization.md``): asymmetric, or with ``symmetric=True`` zero point
    8 and scale ``2 * max|w_g| / 15`` (GPTQ's ``sym=True``; GPTQ chooses only the scales then),
    in the same format and modules, by ``method``:

    - ``"rtn"``: round to nearest; needs no data.
    - ``"gptq"``: GPTQ with the Hessian of each layer's calibration inputs (``percdamp``: damping
      as a fraction of the mean diagonal, raised tenfold while the Hessian is not positive
      definite; ``blocksize``: columns per lazy-batch update; ``act_order``: visit columns by
      decreasing Hessian diagonal). Fewer calibration rows than a layer's K warns with the
      Hessian's condition number. An input channel that is 0 on every calibration row gets
      weight 0 (as in GPTQ's reference implementation).
    - ``"awq"``: AWQ's activation-aware per-input-channel scales (``awq_grid`` points); the scale
      is folded into the LayerNorm or Linear that produces the input when every user of that
      output is quantized here and the forward reads none of their weights directly
      (``awq_fold``, found by a torch.fx trace; that module records it, outside its state dict,
      for :func:`torchquant.report`), else the module keeps it as an ``input_scale``.
      An input channel that is 0 on every calibration row keeps ``s = 1``.

    Both calibrated methods warn once when some input channels were 0 on every calibration row,
    naming the layers.

    ``bits=8``: int8 per output channel (torchquant's dynamic ``DynamicLinear``), RTN or GPTQ;
    always symmetric (zero point 0), so ``symmetric`` changes nothing there (True and False are
    both accepted).

    ``calib_data``: batches the model is called on (``model(*b)`` for a tuple, ``model(**b)`` for
    a dict, else ``model(b)``); one tensor or one dict (a tokenizer's output) is one batch (a tuple
    of tensors given as ``calib_data`` itself is a TypeError: ``[(ids, mask)]`` is one batch); a few
    hundred to a few thousand rows (tokens) per layer input. ``exclude``: names of Linear / Conv1D
    modules left in float (an LM head, say; qualified names as ``named_modules()`` gives them, not
    module types; a name is matched exactly, so naming a block does not exclude its layers).
    ``symmetric``, ``inplace``, ``act_order``, ``awq_fold``, ``cache_block_inputs`` and ``progress``
    take ``True`` or ``False`` only; ``act_order=True`` needs ``bits=4``. ``cache_block_inputs``: for
    GPTQ and AWQ on a model made of a chain of blocks (an ``nn.ModuleList`` or ``nn.Sequential``
    whose blocks each take the previous one's
    output, as a transformer's layers), capture the first block's inputs once and run each block
    alone on them (passes that grow with the depth, as AutoGPTQ's) instead of the model up to each
    layer (passes that grow with its square); the result is the same, and memory holds one
    block's inputs for every calibration batch (``False``: whole forwards, no such memory). A Linear whose weight is tied to another module's (an LM head with
    ``lm_head.weight is wte.weight``) stays float, named in a warning: untie it to quantize it. Returns the quantized model (a copy
    unless ``inplace``; an ``inplace`` call that fails or is interrupted leaves the model as it
    was); a tqdm bar shows progress over layers (``progress=False`` hides it). Memory: the copy
    shares with ``model`` the float weights of the Linears it quantizes (each is swapped out of
    it), so ``inplace`` saves the copy of the rest only. GPTQ / AWQ put each quantized layer's
    dequantized weight in its float weight's place while they calibrate (the float weights are
    not written) and hold above the model the int4 codes of the layers done, the dequantized
    weights (of one block at a time when they calibrate by block; of every layer done with whole
    forwards) and one layer's working set (``docs/quantization.md``).
    """
    check_bits(bits)
    if method not in _METHODS:
        raise ValueError(f"argument 'method' must be one of {_METHODS}, got {method!r}")
    if bits == 4:
        check_group_size(group_size)
    elif method == "awq":
        raise ValueError("method='awq' is implemented for bits=4 only (int8 per channel rarely needs it)")
    if not isinstance(model, nn.Module):
        raise TypeError(f"argument 'model' must be an nn.Module, got {type(model).__name__}")
    _gptq.check_percdamp(percdamp)
    for arg, value in (("blocksize", blocksize), ("awq_grid", awq_grid), ("awq_max_rows", awq_max_rows)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"argument '{arg}' must be an int >= 1, got {value!r}")
    check_symmetric(symmetric)
    for arg, value in (("inplace", inplace), ("act_order", act_order), ("awq_fold", awq_fold),
                       ("cache_block_inputs", cache_block_inputs), ("progress", progress)):
        if not isinstance(value, bool):  # (a string "no" is true)
            raise TypeError(f"argument '{arg}' must be True or False, got {value!r}")
    if act_order and bits == 8:
        raise ValueError("act_order=True is implemented for bits=4 only (GPTQ's int8 path, per output channel, "
                         "visits the columns in their order)")
    batches = None if method == "rtn" else _calib_batches(calib_data, method)
    excluded = _excluded_names(exclude)
    unknown = excluded - {n for n, _ in model.named_modules(remove_duplicate=False)}
    if unknown:
        raise ValueError(f"argument 'exclude' names modules the model does not have: {sorted(unknown)}")
    if not inplace:
        # Every method only reads the weights it replaces (GPTQ and AWQ put stand-ins in their
        # place while they calibrate), and each is swapped out of the copy before it is
        # returned: the copy shares them instead of holding a second float copy of every layer
        # (the layers left in float, excluded or tied, are copied as before)
        lin = _selected_linears(model, excluded)
        tied = _tied_elsewhere(model, lin)
        memo: Dict[int, Any] = {id(m.weight): m.weight for n, m in lin.items()
                                if n not in tied and not _reparametrized(m)}
        from .quantize import _deepcopy  # (a hook-based weight norm's cached weight would make deepcopy fail)
        model = _deepcopy(model, memo)
    swapped: List[Tuple[nn.Module, str, nn.Module]] = []
    # every module's own training flag (calibration runs in eval mode), put back at the end; on
    # an inplace call, the state the calibration forwards may leave in buffers and attributes
    flags = {id(m): (m, m.training) for m in model.modules()}
    snapshot = _StateSnapshot(model) if inplace and method != "rtn" else None
    try:
        out = _quantize_weight_only(model, bits, group_size, method, batches, excluded, percdamp, blocksize,
                                    act_order, awq_grid, awq_fold, awq_max_rows, progress, inplace, swapped,
                                    cache_block_inputs, symmetric)
    except BaseException:
        if inplace:  # a failed or interrupted call leaves the caller's model as it was
            for parent, child, old in reversed(swapped):
                setattr(parent, child, old)
            if snapshot is not None and snapshot.changed():
                snapshot.restore()
        for m, f in flags.values():
            m.training = f
        raise
    for m, f in flags.values():
        m.training = f
    for parent, child, old in reversed(swapped):  # a quantized layer takes the flag of the one it replaced
        if id(old) in flags:
            getattr(parent, child).training = flags[id(old)][1]
    if out is not model:  # the model was the one layer
        out.training = flags[id(model)][1]
    return out


def _quantize_weight_only(model, bits, group_size, method, batches, excluded, percdamp, blocksize, act_order,
                          awq_grid, awq_fold, awq_max_rows, progress, inplace, swapped, cache_block_inputs=True,
                          symmetric=False):
    model = _conv1d_to_linear(model, excluded, swapped)
    model = _plain_reparametrized(model, excluded, swapped)
    linears = _selected_linears(model, excluded)
    own = sorted({type(m).__name__ for n, m in model.named_modules() if isinstance(m, nn.Linear)
                  and n not in excluded and n not in linears and _own_forward(type(m))})
    if own:
        warnings.warn(f"quantize_weight_only: {own} subclass nn.Linear but have a forward() of their own, which the "
                      "quantized layer would not run: they stay in float (give the model plain nn.Linear layers to "
                      "quantize them)", UserWarning, stacklevel=user_stacklevel())
    from .quantize import warn_fused_experts
    warn_fused_experts(model, "quantize_weight_only")
    tied = _tied_elsewhere(model, linears)
    if tied:
        warnings.warn("quantize_weight_only: " + "; ".join(f"{n} shares its weight with {', '.join(o)}" for n, o in tied.items())
                      + ": left in float (tied weights, as a language model's head and its embedding: a quantized "
                      "copy beside the float one it shares would make the model larger); untie them first "
                      "(a copy of the weight) to quantize it", UserWarning, stacklevel=user_stacklevel())
        linears = {n: m for n, m in linears.items() if n not in tied}
    if not linears:
        warnings.warn("quantize_weight_only: nothing was quantized: the model has no nn.Linear (or subclass keeping "
                      "its forward, or Hugging Face Conv1D) to quantize outside 'exclude' and the layers named above "
                      "(an already quantized model comes back as it was)", UserWarning, stacklevel=user_stacklevel())
    meta = [n for n, m in linears.items() if m.weight.is_meta]
    if meta:
        raise ValueError(f"quantize_weight_only: the weights of {_shown(meta[:3])}{' ...' if len(meta) > 3 else ''} "
                         "are on the meta device (no values to quantize): quantize the model with its weights loaded; "
                         "for a model too large for that, quantize it once, then build the quantized skeleton with "
                         ".to('meta').to_empty(device=...) and load_state_dict")
    bad = [n for n, m in linears.items() if not bool(torch.isfinite(m.weight).all())]
    if bad:
        # RTN (and AWQ, which rounds W * s so) would give a NaN the group's lowest code and let an
        # inf's scale zero its group; GPTQ quantizes them as 0 (their error would spread over the row)
        lost = ("GPTQ quantizes them as 0" if method == "gptq" else
                "their groups' other weights are lost (an inf sets its group's scale)")
        warnings.warn(f"quantize_weight_only: the weights of {_shown(bad[:5])}{' ...' if len(bad) > 5 else ''} "
                      f"hold NaN or inf values, which have no quantized value: {lost} and the model's outputs no "
                      "longer show the fault", UserWarning, stacklevel=user_stacklevel())
    model.eval()  # (every module's own training flag is put back by quantize_weight_only)
    results: Dict[str, Tuple] = {}  # name -> (q, scale, zero, input_scale)
    gs = group_size if bits == 4 else None
    # AWQ folds its scales into LayerNorms and Linears (weights and biases) as it goes; on an
    # inplace call that fails, they are put back with everything else (the Linear weights GPTQ
    # and AWQ stand in for are restored below in any case).
    folded = []
    if inplace and method == "awq":
        with torch.no_grad():
            folded = [(t, t.detach().clone()) for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.Linear))
                      for t in (m.weight, m.bias)
                      if isinstance(t, torch.Tensor) and not (m in linears.values() and t is m.weight)]

    if method == "rtn":
        # each layer is swapped as soon as it is quantized: its unpacked values are not kept
        # for every layer until the end, and (on the copy) its float weight is let go
        aliases = _aliases(model)
        for name in _progress(list(linears), progress, "int4 rtn" if bits == 4 else "int8 rtn"):
            q, s, z = _rtn(linears[name].weight.detach().float(), bits, group_size, symmetric)
            if not name:  # the model is the one layer
                results[name] = (q, s, z, None)
                continue
            _swap_one(model, name, linears[name], (q, s, z, None), bits, gs, aliases, swapped)
            del q, s, z
    else:
        shared: Dict[str, str] = {}
        # A Hugging Face model called with its config's use_cache makes a key/value cache object
        # that each layer call appends to; calibration needs none (the Linears' inputs are the
        # same), and without it the layers can be run again on cached inputs.
        config = getattr(model, "config", None)
        use_cache = getattr(config, "use_cache", None) if config is not None else None
        if use_cache is True:
            config.use_cache = False
        try:
            order, calls = _execution_order(model, linears, batches, shared)
            plan = _block_plan(model, linears, order, batches) if cache_block_inputs else {}
        except BaseException:
            if use_cache is True:
                config.use_cache = True
            raise
        # GPTQ and AWQ give each Linear its quantized weight as they go (the layers after it see
        # its output as the int model gives it) as a stand-in for the float weight, put back
        # afterwards or on failure (the copy shares the float weights with the given model).
        stand_ins = _StandIns(linears, results, bits, gs)
        folds: Dict[str, torch.Tensor] = {}  # AWQ: producer name -> the scale its outputs are divided by
        try:
            try:
                if method == "gptq":
                    _run_gptq(model, batches, linears, order, calls, results, stand_ins, bits, group_size,
                              percdamp, blocksize, act_order, progress, shared, plan, symmetric)
                else:
                    _run_awq(model, batches, linears, order, calls, results, stand_ins, group_size, awq_grid,
                             awq_fold, awq_max_rows, progress, plan, symmetric, folds)
            finally:
                if use_cache is True:
                    config.use_cache = True
                stand_ins.restore()
            # (the swaps recorded, to be undone with the rest if one of them fails)
            quantized = [linears[n] for n in results]
            out = _swap(model, linears, results, bits, gs, swapped)
            for n, s in folds.items():  # (on the module now under that name: a Linear's int4 one)
                _record_fold(out.get_submodule(n), s)
            # The float Linears swapped out of an inplace model get back the biases AWQ divided
            # by the scale it folded into them (their int4 modules hold the divided copies).
            own = {id(m.bias) for m in quantized if m.bias is not None}
            with torch.no_grad():
                for t, before in folded:
                    if id(t) in own:
                        t.copy_(before)
            return out
        except BaseException:
            with torch.no_grad():
                for t, before in folded:
                    t.copy_(before)
            raise
    return _swap(model, linears, results, bits, gs, swapped)


def _own_forward(cls) -> bool:
    return cls.forward is not nn.Linear.forward and not cls.__module__.startswith("torchquant.")


def _selected_linears(model: nn.Module, excluded) -> Dict[str, nn.Linear]:
    """The Linears quantize_weight_only replaces: nn.Linear and its subclasses that keep its
    forward (as quantize_dynamic takes them; torchquant's own modules excepted), but not a
    MultiheadAttention's out_proj, which its owner reads directly."""
    mha_out = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    # a layer registered under several names is excluded by any of them
    named_out = {id(m) for n, m in model.named_modules(remove_duplicate=False) if n in excluded}
    return {n: m for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and n not in excluded and id(m) not in mha_out and id(m) not in named_out
            and (type(m) is nn.Linear or not (_own_forward(type(m)) or type(m).__module__.startswith("torchquant.")))}


def _reparametrized(m: nn.Module) -> bool:
    """A layer whose weight is computed from other tensors at each use (torch.nn.utils's
    parametrizations, or the hook-based weight_norm / spectral_norm): writing to ``.weight``
    changes a throwaway tensor."""
    from torch.nn.utils import parametrize

    from .quantize import _norm_hooks
    return parametrize.is_parametrized(m) or any(True for _ in _norm_hooks(m))


def _effective_weight(m: nn.Module) -> torch.Tensor:
    from .quantize import _norm_hooks
    for hook in _norm_hooks(m):  # (the attribute holds the weight of the last forward)
        if type(hook).__name__ == "WeightNorm":
            return hook.compute_weight(m)
        return hook.compute_weight(m, do_power_iteration=False)
    # read in eval mode: in training mode a parametrized spectral norm's read runs a power
    # iteration, which would change the given module's u / v buffers
    flags = [(x, x.training) for x in m.modules()]
    m.eval()
    try:
        return m.weight
    finally:
        for x, f in flags:
            x.training = f


def _plain_reparametrized(model: nn.Module, excluded, swapped: Optional[List] = None) -> nn.Module:
    """Puts a plain nn.Linear holding the current effective weight (and bias) in place of each
    re-parametrized Linear that will be quantized (the given module left as it is): GPTQ and AWQ
    write their stand-in weights into it, which a parametrized layer would drop."""
    def make(name, m):
        with torch.no_grad():
            w = _effective_weight(m).detach().clone()
            b = m.bias.detach().clone() if m.bias is not None else None
        return _linear_of(w, b, m, requires_grad=False)

    return _replace_layers(model, excluded, lambda m: isinstance(m, nn.Linear) and _reparametrized(m), make, swapped)


def _linear_of(w: torch.Tensor, b: Optional[torch.Tensor], old: nn.Module, requires_grad: bool) -> nn.Linear:
    """An nn.Linear holding w [out, in] and b (built on the meta device: no table allocated only
    to be overwritten), with old's training flag and forward hooks."""
    from .quantize import _copy_hooks
    lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta", dtype=w.dtype)
    lin.weight = nn.Parameter(w, requires_grad=requires_grad)
    if b is not None:
        lin.bias = nn.Parameter(b, requires_grad=requires_grad)
    lin.train(old.training)
    _copy_hooks(old, lin)
    return lin


def _replace_layers(model: nn.Module, excluded, pick, make, swapped: Optional[List] = None) -> nn.Module:
    """Puts make(name, m) in place of each module m with pick(m) not in `excluded`, under every
    name it is registered as (one replacement per module), recording each swap in `swapped` (to
    undo them). Returns the model (the replacement where the model itself is picked). A module
    registered under several names is excluded by any of them (and kept under all)."""
    modules = list(model.named_modules(remove_duplicate=False))
    named_out = {id(m) for n, m in modules if n in excluded}
    new: Dict[int, nn.Module] = {}
    for name, m in modules:
        if id(m) in named_out or not pick(m):
            continue
        if id(m) not in new:
            new[id(m)] = make(name, m)
        if not name:
            return new[id(m)]
        _set_under(model, name, new[id(m)], swapped)
    return model


def _set_under(model: nn.Module, name: str, new: nn.Module, swapped: Optional[List]) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if swapped is not None:  # (parent, name, old module): what undoes the swap
        swapped.append((parent, child, getattr(parent, child)))
    setattr(parent, child, new)


def _tied_elsewhere(model: nn.Module, linears: Dict[str, nn.Linear]) -> Dict[str, List[str]]:
    """{Linear name: the other modules holding its weight Parameter} for the Linears whose weight
    is tied to another module's (a language model's head to its input embedding)."""
    holders: Dict[int, List[str]] = {}
    for mname, m in model.named_modules(remove_duplicate=False):
        for p in m._parameters.values():
            if p is not None:
                holders.setdefault(id(p), []).append(mname)
    named = dict(model.named_modules(remove_duplicate=False))  # a layer under two names is one layer
    out = {}
    for n, lin in linears.items():
        if _reparametrized(lin):  # (its weight is computed: no Parameter to share; reading it in training
            continue              # mode would run a spectral norm's power iteration on the caller's model)
        others = [h for h in sorted({h for h in holders.get(id(lin.weight), []) if h != n}) if named.get(h) is not lin]
        if others:
            out[n] = others
    return out


def _conv1d_to_linear(model: nn.Module, excluded, swapped: Optional[List] = None) -> nn.Module:
    """Replaces each Hugging Face ``Conv1D`` (GPT-2's layers: ``y = x @ W + b`` with W stored
    [in, out]) by the equivalent ``nn.Linear`` (weight transposed once), under every name it is
    registered as, so that every method treats it as one; the quantized module that replaces it
    computes the same function. Returns the model (the new Linear where the model is a Conv1D)."""
    from .nn.quantized_dynamic import is_hf_conv1d

    def make(name, m):
        w = m.weight
        if w.dim() != 2:
            raise ValueError(f"{name or 'the model'}: expected a Conv1D weight [in, out] of 2 dimensions, got shape "
                             f"{tuple(w.shape)}")
        b = m.bias.detach().clone() if m.bias is not None else None
        return _linear_of(w.detach().t().contiguous(), b, m, requires_grad=w.requires_grad)

    return _replace_layers(model, excluded, lambda m: is_hf_conv1d(type(m)), make, swapped)


def _rtn(w, bits, group_size, symmetric=False):
    if bits == 8:  # (symmetric already: zero point 0)
        return _int8_rtn(w)
    s, z = choose_group_qparams(w, group_size, symmetric)
    return quantize_groups(w, s, z, group_size), s, z


def _int8_rtn(w):
    # NaN / inf weights as int4's RTN takes them: a NaN sets no scale (and gets the zero point),
    # an inf sets its channel's to the float32 maximum's (a NaN or inf scale was refused later,
    # naming no layer)
    a = torch.nan_to_num(w.abs(), nan=0.0)
    # (K = 0: no weights, the smallest scale; amax over an empty dimension raises)
    amax = (a.amax(1) if a.shape[1] else a.new_zeros(a.shape[0])).clamp(min=torch.finfo(torch.float32).eps)
    s = (amax / 127.5).reshape(-1, 1)
    q = torch.clamp(torch.nan_to_num(torch.round(w * (1.0 / s)), nan=0.0), -128, 127)
    return q.to(torch.int8), s, torch.zeros_like(s, dtype=torch.int64)


def _fake(q, s, z, bits, group_size):
    if bits == 8:
        return q.float() * s
    return dequantize_groups(q, s, z, group_size)


def _run_gptq(model, batches, linears, order, calls, results, stand_ins, bits, group_size, percdamp, blocksize,
              act_order, progress, shared=None, plan=None, symmetric=False):
    # Linears that read the very same input as the one before them, each called once per
    # forward (q, k, v), share its Hessian: one calibration pass for the group instead of one
    # each. Exact: quantizing q changes nothing upstream of k's input.
    shared = shared or {}
    feeder = _Feeder(model, batches, plan or {}, stand_ins.drop_block)
    acc, owner, group = None, None, set()
    dead: Dict[str, Tuple[int, int]] = {}
    for name in _progress(order, progress, f"int{bits} gptq"):
        lin = linears[name]
        what = name or "the model"  # (for messages: the model may be the one Linear)
        if not lin.in_features:  # no inputs: nothing to calibrate (its output is its bias)
            q, s, z = _rtn(lin.weight.detach().float(), bits, group_size, symmetric)
            results[name] = (q if bits == 8 else _Codes(q), s, z, None)
            continue
        # joins the current group only when the Linear whose input it read is in that group
        # (a repeated call of an earlier Linear reads another input)
        joins = (acc is not None and shared.get(name) in group and calls.get(name, 0) == 1
                 and calls.get(owner, 0) == 1 and lin.in_features == acc.H.shape[0]
                 and lin.weight.device == acc.H.device)
        if not joins:
            acc = _gptq.HessianAccumulator(lin.in_features, device=lin.weight.device)
            owner, group = name, set()
            feeder.capture(name, lin, acc.add, stop=calls.get(name, 0) == 1)
        group.add(name)
        W = lin.weight.detach().float()
        if acc.rows:
            n_dead = int((torch.diag(acc.H) == 0).sum())
            if n_dead:
                dead[name] = (n_dead, lin.in_features)
        if acc.rows == 0:
            warnings.warn(f"GPTQ: {what} {_not_seen(acc.calls)}; rounded to nearest", RuntimeWarning,
                          stacklevel=user_stacklevel())
            q, s, z = _rtn(W, bits, group_size, symmetric)
        elif bits == 8:
            q, s, z = _gptq_int8(W, acc, percdamp, blocksize, act_order, what)
        else:
            q, s, z = _gptq.gptq_quantize(W, acc.H, group_size, percdamp, blocksize, act_order, rows=acc.rows,
                                          name=what, symmetric=symmetric)
        fake = _fake(q, s, z, bits, group_size)
        if not torch.isfinite(fake).all():  # cannot happen with finite weights; never hand out NaN
            raise FloatingPointError(f"GPTQ produced non-finite weights for {what}")
        results[name] = (q if bits == 8 else _Codes(q), s, z, None)
        stand_ins.set(name, fake=fake)
        del fake
    _warn_dead_inputs("GPTQ", dead, "GPTQ set their weights to 0, as its reference implementation does (they do not "
                      "change the output on the calibration rows)")


def _shown(names: Sequence[str]) -> List[str]:
    """Layer names for a message: the model that is itself the one Linear is named "" there."""
    return [n or "the model" for n in names]


def _not_seen(calls: int, plural: bool = False) -> str:
    """Why a layer got no calibration rows: never called, or called on empty inputs only."""
    if not calls:
        return f"{'were' if plural else 'was'} not called on the calibration data"
    return "saw no calibration rows (called on empty inputs only)"


def _warn_dead_inputs(method: str, dead: Dict[str, Tuple[int, int]], what: str) -> None:
    """One warning for the layers with input channels that were 0 on every calibration row
    ({name: (how many, K)}): what the method did with their weights matters on other data."""
    if not dead:
        return
    listed = ", ".join(f"{n or 'the model'}: {c} of {k}" for n, (c, k) in list(dead.items())[:5])
    total, layers = sum(c for c, _ in dead.values()), len(dead)
    warnings.warn(f"{method}: {total} input channel{'s' * (total > 1)} of {layers} layer{'s' * (layers > 1)} "
                  f"{'were' if total > 1 else 'was'} 0 on every calibration row ({listed}{' ...' * (layers > 5)}); "
                  f"{what}. Inputs that are non-zero on other data (a ReLU "
                  "neuron the calibration rows never fire) need calibration data that reaches them",
                  RuntimeWarning, stacklevel=user_stacklevel())


def _gptq_int8(W, acc, percdamp, blocksize, act_order, name):
    """GPTQ's column loop on the int8 grid of DynamicLinear (symmetric, per output channel, scales
    from the original weight); act_order is not implemented here (quantize_weight_only refuses it).
    Fewer calibration rows than K warn as gptq_quantize's."""
    N, K = W.shape
    Wd = W.to(torch.float64, copy=True)
    Wd.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)  # (NaN / inf weights as 0, as gptq_quantize takes them)
    q8, s8, _ = _int8_rtn(Wd.float())
    H = acc.H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    Wd[:, dead] = 0
    _gptq._warn_few_rows(H, acc.rows, percdamp, name)
    U, _ = _gptq._inverse_cholesky(H, percdamp, name)
    s = s8.double().reshape(-1)
    Q = torch.empty(N, K, dtype=torch.int8, device=W.device)
    for i1 in range(0, K, blocksize):
        i2 = min(i1 + blocksize, K)
        W1 = Wd[:, i1:i2].clone()
        E = torch.zeros_like(W1)
        for i in range(i2 - i1):
            w = W1[:, i]
            q = torch.clamp(torch.round(w.float() * (1.0 / s8.reshape(-1))), -128, 127).double()
            Q[:, i1 + i] = q.to(torch.int8)
            err = (w - q * s) / U[i1 + i, i1 + i]
            W1[:, i:] -= err.unsqueeze(1) * U[i1 + i, i1 + i:i2].unsqueeze(0)
            E[:, i] = err
        Wd[:, i2:].addmm_(E, U[i1:i2, i2:], alpha=-1)  # in place: no [N, K - i2] product
    return Q, s8, torch.zeros_like(s8, dtype=torch.int64)


class _RowSample:
    """The rows [K] of the inputs a Linear sees (float32 copies, taken as they come: a model
    that changes its input in place after the call changes nothing here), at most ``limit`` of
    them: all, in their order, while they fit; past that, a uniform sample without replacement
    (the ``limit`` rows with the smallest of random keys drawn from ``gen``, kept as they come),
    so that memory holds ``limit`` rows, not every row of every batch. Over all rows: whether
    all were finite (``finite``) and which input channels were non-zero in some row (``live``)."""

    def __init__(self, limit: int, gen: torch.Generator):
        self.limit, self.gen = limit, gen
        self.seen = 0
        self.calls = 0  # (calls on empty inputs too: "saw no rows" is not "not called")
        self.finite = True
        self.live: Optional[torch.Tensor] = None
        self.parts: List[torch.Tensor] = []  # while the rows fit
        self.X: Optional[torch.Tensor] = None  # past that: the sample [limit, K] and its keys
        self.keys: Optional[torch.Tensor] = None

    def add(self, x: torch.Tensor) -> None:
        self.calls += 1
        # (the rows counted, not -1: reshape(-1, 0) of an input with K = 0 is ambiguous)
        x = x.detach().reshape(math.prod(x.shape[:-1]), x.shape[-1])
        if not x.shape[0]:
            return
        self.finite = self.finite and bool(torch.isfinite(x).all())
        nz = (x != 0).any(0)
        self.live = nz if self.live is None else self.live | nz
        held = self.seen if self.X is None else self.limit
        self.seen += x.shape[0]
        take = min(x.shape[0], self.limit - held)
        if take:
            self.parts.append(x[:take].to(torch.float32, copy=True))
        x = x[take:]
        if not x.shape[0]:
            return
        if self.X is None:  # the rows no longer fit: the sample starts from those kept
            self.X = torch.cat(self.parts, 0)
            self.parts = []
            self.keys = torch.rand(self.limit, generator=self.gen, dtype=torch.float64)
        keys = torch.rand(x.shape[0], generator=self.gen, dtype=torch.float64)
        keep = torch.zeros(self.limit + x.shape[0], dtype=torch.bool)
        keep[torch.cat([self.keys, keys]).topk(self.limit, largest=False).indices] = True
        out = (~keep[:self.limit]).nonzero().flatten()  # the slots of the rows that leave the sample
        new = keep[self.limit:].nonzero().flatten()  # the rows of x that take them
        self.keys[out] = keys[new]
        self.X[out.to(self.X.device)] = x[new.to(x.device)].float()

    def rows(self) -> torch.Tensor:
        return self.X if self.X is not None else torch.cat(self.parts, 0)


def _run_awq(model, batches, linears, order, calls, results, stand_ins, group_size, grid, fold, max_rows,
             progress, plan=None, symmetric=False, folds: Optional[Dict[str, torch.Tensor]] = None):
    """AWQ of the Linears; `folds` receives {producer name: s} for each scale folded into the
    output channels of a LayerNorm or Linear (which outputs its float values / s from then on)."""
    producers = _producers(model, order) if fold else {}
    traced = producers is not None
    producers = producers or {}
    mods = dict(model.named_modules())
    done = set()
    groups = []
    for name in order:
        if name in done:
            continue
        if name in producers:
            prod, users = producers[name]
            members = [u for u in order if u in users]
        else:
            prod, members = None, [name]
        done.update(members)
        groups.append((prod, members))
    plan = plan or {}
    if plan:
        # A scale folded into an op of another block than its layers' would change inputs
        # already cached: such a model runs whole forwards.
        chains = {id(c): c for c, _ in plan.values()}.values()
        def block_of(m):
            return next(((id(c), i) for c in chains for i, b in enumerate(c.blocks)
                         if any(m is x for x in b.modules())), None)
        def where(n):
            return (id(plan[n][0]), plan[n][1]) if n in plan else block_of(linears[n])
        if any(prod is not None and block_of(mods[prod]) != where(members[0]) for prod, members in groups):
            plan = {}
    feeder = _Feeder(model, batches, plan, stand_ins.drop_block)
    gen = torch.Generator().manual_seed(0)
    dead: Dict[str, Tuple[int, int]] = {}

    def nearest(members):
        for m in members:
            W = linears[m].weight.detach().float()
            s_, z_ = choose_group_qparams(W, group_size, symmetric)
            results[m] = (_Codes(quantize_groups(W, s_, z_, group_size)), s_, z_, None)

    for prod, members in _progress(groups, progress, "int4 awq"):
        first = linears[members[0]]
        if not first.in_features:  # no inputs: nothing to calibrate or fold (their outputs are their biases)
            nearest(members)
            continue
        sample = _RowSample(max_rows, gen)
        feeder.capture(members[0], first, sample.add, stop=all(calls.get(m, 0) == 1 for m in members))
        # (the model may be the one Linear: its name is "")
        what = ", ".join(_shown(members))
        if not sample.seen:
            warnings.warn(f"AWQ: {what} {_not_seen(sample.calls, len(members) > 1)}; rounded to nearest",
                          RuntimeWarning, stacklevel=user_stacklevel())
            nearest(members)
            continue
        if not sample.finite:
            raise ValueError(f"AWQ: the inputs of {members[0] or 'the model'} on the calibration data hold NaN or "
                             "inf: check 'calib_data' and the layers before it")
        X = sample.rows()
        n_dead = int((~sample.live).sum())
        if n_dead:
            dead.update((m, (n_dead, X.shape[1])) for m in members)
        weights = [linears[m].weight.detach().float() for m in members]
        s, alpha, _ = _awq.awq_search(X, weights, group_size, grid, symmetric)
        for m, W in zip(members, weights):
            Ws = W * s
            sc, zp = choose_group_qparams(Ws, group_size, symmetric)
            q = quantize_groups(Ws, sc, zp, group_size)
            fake = dequantize_groups(q, sc, zp, group_size)
            if prod is None:
                results[m] = (_Codes(q), sc, zp, 1.0 / s)
                stand_ins.set(m, div=s, fake=fake)
            else:
                results[m] = (_Codes(q), sc, zp, None)
                stand_ins.set(m, fake=fake)
            del fake
        if prod is not None:
            _fold_into(mods[prod], prod, s, results, stand_ins)
            if folds is not None:
                folds[prod] = s
    _warn_dead_inputs("AWQ", dead, "AWQ left their weights unscaled (s = 1) and their inputs unamplified")
    kept = [n for n in order if n in results and results[n][3] is not None]
    if fold and kept:
        # Not an error (the result is the same), but a cost the user may want to know of.
        why = ("no LayerNorm (with affine weights) or Linear produces their input for them alone, or the model "
               "also reads its weights or theirs directly" if traced else
               "torch.fx could not trace the model")
        warnings.warn(f"AWQ: the scales of {len(kept)} of {len(order)} layers could not be folded into the op "
                      f"before them ({why}); they keep an input_scale, one elementwise multiply of the input per "
                      f"call (first: {_shown(kept[:3])})", UserWarning, stacklevel=user_stacklevel())


# The attribute of a module whose output channels AWQ divided by its consumers' scales s (float32
# [C]): a plain attribute, not a buffer, so that the state dict keeps its keys (deepcopy and
# pickle keep it). report() multiplies the module's output by it: its row then shows the error of
# the module's own quantization, not the exact fold.
_FOLD_ATTR = "_tq_awq_output_scale"


def _record_fold(m: nn.Module, s: torch.Tensor) -> None:
    prev = m.__dict__.get(_FOLD_ATTR)  # (a module folded into by an earlier call: its output is y / (prev * s))
    s = s.detach().float()
    setattr(m, _FOLD_ATTR, s if prev is None else prev.to(s.device) * s)


def _fold_into(pm: nn.Module, name: str, s: torch.Tensor, results: Dict[str, Tuple], stand_ins: "_StandIns"):
    """Divides the output channels of the producer by s (its consumers' weights were multiplied)."""
    with torch.no_grad():
        if isinstance(pm, nn.LayerNorm):
            pm.weight.div_(s.to(pm.weight.dtype))
            if pm.bias is not None:
                pm.bias.div_(s.to(pm.bias.dtype))
            return
        # A Linear: its bias, and when it is quantized here, its group scales (exact: row n of
        # s_g * (q - z) divides by s[n]) and so its stand-in; a Linear left in float, its weight.
        if pm.bias is not None:
            pm.bias.div_(s.to(pm.bias.dtype))
        if name in results:
            q, sc, zp, inp = results[name]
            results[name] = (q, sc / s.reshape(-1, 1).to(sc.dtype), zp, inp)
            stand_ins.set(name)
        elif name in stand_ins.linears:  # (quantized later: the given weight, shared with the caller's model, stays)
            stand_ins.replace_weight(name, pm.weight / s.to(pm.weight.dtype).reshape(-1, 1))
        else:
            pm.weight.div_(s.to(pm.weight.dtype).reshape(-1, 1))


def _aliases(model) -> Dict[int, List[str]]:
    aliases: Dict[int, List[str]] = {}  # a layer registered under several names is replaced under each
    for n, m in model.named_modules(remove_duplicate=False):
        aliases.setdefault(id(m), []).append(n)
    return aliases


def _swap(model, linears, results, bits, group_size, swapped=None):
    aliases = _aliases(model)
    for name in list(results):
        # (each layer's codes let go once its module holds them)
        new = _swap_one(model, name, linears[name], results.pop(name), bits, group_size, aliases, swapped)
        if not name:  # the model is the one layer
            return new
    return model


def _swap_one(model, name, lin, res, bits, group_size, aliases, swapped=None):
    """Puts the quantized module for `lin` in its place under each of its names (recording the
    swaps in `swapped`, to undo them) and returns it."""
    from .nn.quantized import DynamicLinear
    q, s, z, inp = res
    q = _codes(q)
    # the bias is the module's current one (AWQ may have folded a scale into it)
    if bits == 4:
        new = LinearWeightOnlyInt4.from_qparams(q, s, z, lin.bias, group_size, inp)
    else:
        try:
            new = DynamicLinear(lin.in_features, lin.out_features, lin.bias is not None)
            if lin.weight.dtype.is_floating_point:
                new._float_dtype = lin.weight.dtype  # what its .weight reads as (DynamicLinear.from_float's)
            with torch.no_grad():
                new.qweight.copy_(q.cpu())
                new.weight_scale.copy_(s.reshape(-1).float().cpu())
                new.weight_zero_point.zero_()
                if lin.bias is not None:
                    new.bias.copy_(lin.bias.detach().float().cpu())
            new._repack()
        except RuntimeError as e:  # K past the int32-exact bound: say which layer
            raise RuntimeError(f"quantize_weight_only: module '{name or type(lin).__name__}' (Linear "
                               f"{lin.in_features} -> {lin.out_features}) cannot be quantized to int8: {e}") from e
        new = new.to(lin.weight.device)
    compact(new)  # (one copy of its weights in memory)
    if _FOLD_ATTR in lin.__dict__:  # (a float layer an earlier AWQ call folded into: the int one outputs y / s too)
        setattr(new, _FOLD_ATTR, lin.__dict__[_FOLD_ATTR])
    if name:
        for alias in aliases.get(id(lin), [name]):
            _set_under(model, alias, new, swapped)
    if not new._forward_hooks and not new._forward_pre_hooks:
        from .quantize import _copy_hooks
        _copy_hooks(lin, new)  # the user's hooks, as convert and quantize_dynamic carry them
    return new


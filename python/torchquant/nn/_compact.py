"""One copy of a converted layer's weights in memory.

A quantized module's kernels read a packed layout (non-persistent buffers, per device), built from
its portable weight ``qweight`` (the state dict's). Keeping both doubled the memory of every
converted layer. A *compact* module keeps the packed layout alone: its ``qweight`` buffer holds a
placeholder (a tensor of the weight's shape and dtype on the meta device: no memory, and no
values to read by mistake), and the portable weight is rebuilt from the packed one where
something needs it:

- ``state_dict()`` saves the rebuilt weight (the same bytes as before);
- reading ``module.qweight`` (or ``.weight``) puts the rebuilt weight back in the buffer: the
  module is then an ordinary one again, whose weight can be changed in place as before; inside
  torch.compile / torch.export the read is computed in the graph from the packed layout instead,
  and the module stays as it is (a read of the shape or dtype alone leaves dead code);
- ``.to()`` / ``.cuda()`` / ``.half()``, ``load_state_dict`` and a rebuild of the layout (a
  changed qparam, ``torchquant.repack``) rebuild the portable weight first, do what they did, and
  compact again;
- pickling (``torch.save(model)``, ``copy.deepcopy``) stores the portable weight (a layout is
  per machine) and the copy compacts itself again when loaded. A process started with the model
  as an argument (spawn / forkserver: ``ctx.Process(args=...)``, ``torch.multiprocessing.spawn``,
  a DataLoader worker's dataset) shares its tensors, as it shares a float model's: the weight
  rebuilt for it is shared too (kept alive with the Process), and the child keeps it beside the
  layout, as a model after ``share_memory()`` does.

A weight is compacted only where the rebuilt weight equals the one in the buffer (checked when
compacting), so the placeholder never stands for anything but the exact weight. Tensors put in
place of the placeholder (``torch.func.functional_call`` with another state, an assignment) are
used as before; the module's own layout is kept aside until the placeholder is back.
"""
import contextlib
import functools
import math
import types
import weakref
from typing import Callable, Dict, Optional

import torch
from torch import nn

from ._state_dict import (_REPACK_LOCK, _sources_changed, adopt_handed, note_handed, note_packed, repack_if_stale,
                          repack_versions)


class _Rebuild:
    """What a placeholder stands for: the packed layout it was compacted from and how to read the
    weight back from it (no reference to the module: a placeholder passed to another module,
    as torch.func.functional_call does with named_buffers(), still reads back). The last weight
    read back is kept weakly and given again while unchanged, so that a module saved under
    two names saves one tensor."""

    __slots__ = ("bufs", "shape", "unpack", "last", "last_version")

    def __init__(self, bufs, shape, unpack):
        self.bufs, self.shape, self.unpack = bufs, shape, unpack
        self.last, self.last_version = None, None

    def __getstate__(self):  # (pickled and deep-copied without the weak reference)
        return self.bufs, self.shape, self.unpack

    def __setstate__(self, state):
        self.bufs, self.shape, self.unpack = state
        self.last, self.last_version = None, None

    def __call__(self) -> torch.Tensor:
        if torch.compiler.is_compiling():
            # A trace: read in the graph, and nothing recorded (torch.compile refuses a write to a
            # Python object inside an autograd.Function's backward, InputGrad's weight read, and
            # a traced tensor is no weight to give again)
            return self.unpack(self.bufs, self.shape)
        w = self.last() if self.last is not None else None
        if w is not None and w._version == self.last_version:
            return w
        # (a normal tensor under torch.inference_mode too: the version counter is what tells a
        # weight changed, and the state dict's tensors outlive the mode)
        with torch.inference_mode(False):
            return self._read()

    def _read(self) -> torch.Tensor:
        w = self.unpack(self.bufs, self.shape)
        self.last, self.last_version = weakref.ref(w), w._version
        return w


def _placeholder(w: torch.Tensor, rebuild: _Rebuild) -> torch.Tensor:
    # On the meta device: the weight's shape and dtype and no data, so that code reading the
    # buffer directly (``_buffers``, ``named_buffers()``) fails loudly on it rather than reading
    # values that are not the weight's.
    with torch.inference_mode(False):
        ph = torch.empty(w.shape, dtype=w.dtype, device="meta")
    ph._tq_rebuild = rebuild
    return ph


def _rebuild_of(t) -> Optional[_Rebuild]:
    """The read-back of placeholder t (any module's), or None for any other value."""
    if isinstance(t, torch.Tensor) and t.device.type == "meta":
        r = getattr(t, "_tq_rebuild", None)
        return r if isinstance(r, _Rebuild) else None
    return None


def is_compact(module: nn.Module) -> bool:
    """Whether module's ``qweight`` buffer is its placeholder (its weight lives in the packed layout
    only)."""
    rec = module.__dict__.get("_tq_compact")
    return rec is not None and module._buffers.get("qweight") is rec[0]


def _kernel_buffers(module: nn.Module) -> Dict[str, torch.Tensor]:
    b = module._buffers
    return {k: b[k] for k in module._non_persistent_buffers_set if isinstance(b.get(k), torch.Tensor)}


def _unpacker(module: nn.Module) -> Callable:
    """module's _unpack_qweight bound to a copy of the attributes it reads, not to the module."""
    attrs = types.SimpleNamespace(**{k: getattr(module, k) for k in getattr(module, "_unpack_attrs", ())})
    return functools.partial(type(module)._unpack_qweight, attrs)


def compact(module: nn.Module) -> bool:
    """Replaces module's portable weight by its placeholder when the packed layout in place is
    current and gives that weight back exactly. Returns whether the module is compact now."""
    if is_compact(module):
        return True
    b = module._buffers
    w = b.get("qweight")
    if (getattr(module, "_unpack_qweight", None) is None or not isinstance(w, torch.Tensor) or w.numel() == 0
            or w.device.type == "meta" or torch.compiler.is_compiling()):
        return False
    # (shared memory, share_memory(): other processes read the weight and its layout from there,
    # and a load writes into both; that model keeps both)
    if w.device.type == "cpu" and w.is_shared():
        return False
    with _REPACK_LOCK:
        repack_if_stale(module)
        # (read after the repack: its note_packed puts a normal copy in place of an inference
        # tensor, as a copy or load made under torch.inference_mode holds)
        w = b.get("qweight")
        rec = module.__dict__.get("_tq_packed_from")
        if rec is None or b.get(rec[3]) is not rec[0] or rec[1][0] is not w:
            return False  # (a layout the caller put in place, or none)
        rebuild = _Rebuild(_kernel_buffers(module), w.shape, _unpacker(module))
        try:
            back = rebuild()
        except (RuntimeError, NotImplementedError, ValueError):
            return False
        if back is None or back.shape != w.shape or back.dtype != w.dtype or not torch.equal(back, w):
            return False
        h = module.__dict__.get("_tq_handed")
        if h is not None and h[0] is w and rec[4][0] is not None and h[1] != rec[4][0]:
            # The handed-out weight is the one being compacted, written since it was handed out
            # while it was the module's own (load_state_dict(model.state_dict()) copies into it,
            # set_weight_bias too): the layout holds what it held when packed (its version then,
            # so that a write landing since is still seen), not a write for the next call to take
            # as the user's (the module would keep both copies).
            h = module.__dict__["_tq_handed"] = (w, rec[4][0])
        # A weight an earlier state_dict() handed out, unwritten and equal: the read-back gives
        # that tensor again, so that state dicts taken before and after this compaction share it
        # (as an uncompacted module's share its buffer).
        if h is not None and h[0]._version == h[1] and (h[0] is w or (
                h[0].shape == w.shape and h[0].dtype == w.dtype and h[0].device == w.device and torch.equal(h[0], w))):
            rebuild.last, rebuild.last_version = weakref.ref(h[0]), h[0]._version
        ph = _placeholder(w, rebuild)
        b["qweight"] = ph
        module.__dict__["_tq_compactable"] = True
        # (its layout: rebuild.bufs; the read-back kept here too, for a trace that sees the buffer
        # as a tensor of its own: non-strict torch.export's fake tensors, _traced_read)
        module.__dict__["_tq_compact"] = (ph, ph._version, rebuild)
        note_packed(module, rec[2], rec[3])  # (the placeholder as the layout's source)
    return True


def portable_qweight(module: nn.Module) -> Optional[torch.Tensor]:
    """The weight a placeholder in module's ``qweight`` buffer stands for (its own, or another
    module's put there), read back from its layout; None when the buffer holds no placeholder.
    Under torch.compile / torch.export: computed in the graph (:func:`_traced_read`)."""
    if torch.compiler.is_compiling():
        return _traced_read(module, values=True)
    adopt_handed(module)
    ph = module._buffers.get("qweight")
    r = _rebuild_of(ph)
    return None if r is None else r()


class _ProbedLayout(Exception):
    """unpack_by_probes called inside a trace (_traced_read turns it into its error)."""


def _traced_read(module: nn.Module, values: bool) -> Optional[torch.Tensor]:
    """Under torch.compile / torch.export: the weight the placeholder in module's ``qweight``
    buffer stands for, computed in the graph by the layout's unpack from the kernel buffers (plain
    reshapes / permutes / cats of them), or None where the buffer holds no placeholder. The module
    and its _Rebuild are left as they are (a trace does not change the module), and a read whose
    result goes unused (model code reading its shape or dtype) is dead code that the graph drops.
    The module's own layout is read from its buffers as the trace sees them: non-strict
    torch.export puts fake tensors there, without the placeholder's record (the module's
    _tq_compact holds it). A layout read back by probing the packing op (unpack_by_probes: not
    traceable) gives the placeholder for a read that may look only at its shape (``values``
    False: module.qweight), and an error naming the workaround for one that needs the values."""
    b = module._buffers
    ph = b.get("qweight")
    if not isinstance(ph, torch.Tensor) or ph.device.type != "meta":
        return None
    rec = module.__dict__.get("_tq_compact")
    own = rec[2] if rec is not None else None
    r = _rebuild_of(ph)
    if r is None or r is own:
        if own is None or ph.shape != own.shape:
            return None  # (a tensor on the meta device that stands for nothing: a skeleton's)
        r, bufs = own, {k: b[k] if isinstance(b.get(k), torch.Tensor) else t for k, t in own.bufs.items()}
    else:
        bufs = r.bufs  # (another module's placeholder put in place: its layout)
    try:
        return r.unpack(bufs, r.shape)
    except _ProbedLayout:
        if not values:
            return ph
        raise RuntimeError(
            f"{type(module).__name__}: its weight cannot be read inside torch.compile / torch.export: the layer is "
            "compact (its weight lives in the kernel layout only, torchquant.nn._compact), and this layout is read "
            "back by probing the packing op, which does not trace. Read module.qweight once before compiling or "
            "exporting: that puts the weight back in the buffer (the layer then holds both)") from None


def _check_placeholder_unwritten(module: nn.Module) -> None:
    rec = module.__dict__["_tq_compact"]
    # (a trace cannot read a version: it runs the weights as they are)
    if not torch.compiler.is_compiling() and rec[0]._version != rec[1]:
        raise RuntimeError(
            f"{type(module).__name__}: something wrote in place into its qweight buffer, which holds a placeholder "
            "(the weight lives in the packed layout only, torchquant.nn._compact): read module.qweight, which "
            "puts the weight back in the buffer, and write into that")


def _expand(module: nn.Module) -> bool:
    if not is_compact(module):
        return False
    _check_placeholder_unwritten(module)
    ph = module.__dict__["_tq_compact"][0]
    b = module._buffers
    # the layout in place is the placeholder's and current (the record's sources, the placeholder
    # first, unchanged): recorded anew as built from the weight put back
    rec = module.__dict__.get("_tq_packed_from")
    current = (rec is not None and rec[1][0] is ph and b.get(rec[3]) is rec[0]
               and rec[0] is ph._tq_rebuild.bufs.get(rec[3])
               and not _sources_changed(module, rec, torch.compiler.is_compiling()))
    b["qweight"] = ph._tq_rebuild()
    del module.__dict__["_tq_compact"]
    if current:
        note_packed(module, rec[2], rec[3])
    return True


@contextlib.contextmanager
def expanded(module: nn.Module):
    """The body (a move, a load, a repack: work that reads or writes ``qweight``) runs on the
    portable weight; a module that was compact is compacted again after it (not inside a trace,
    which keeps the module as it leaves it)."""
    was = expand(module)
    yield
    if torch.compiler.is_compiling():
        return
    # A module that was compact once and whose weight the body put on the meta device (a
    # skeleton made by .to("meta"), for .to_empty() and load_state_dict) is compacted again
    # once a later body gives it a weight that packs.
    d = module.__dict__
    w = module._buffers.get("qweight")
    if (d.get("_tq_compactable", False) and isinstance(w, torch.Tensor) and w.device.type == "meta"
            and _rebuild_of(w) is None):
        d["_tq_skeleton"] = True
    elif (was or d.get("_tq_skeleton", False)) and compact(module):
        d.pop("_tq_skeleton", None)


def expand(module: nn.Module) -> bool:
    """Puts the portable weight, rebuilt from the module's own layout, back in its ``qweight``
    buffer. Returns whether the module was compact. Where that layout is the one in place and
    current, it is recorded as built from the weight now in place (no rebuild at the next call:
    torch.jit.trace reads every buffer by name before it traces)."""
    if torch.compiler.is_compiling():  # (no lock in a graph, and no other thread in a trace)
        return _expand(module)
    adopt_handed(module)
    with _REPACK_LOCK:
        return _expand(module)


def _versioned_repack(repack: Callable, module: nn.Module, *args, **kwargs):
    repack_versions(module)  # (the versions the layout is built from: note_packed records them)
    try:
        return repack(module, *args, **kwargs)
    finally:
        if "_tq_versions_before" in module.__dict__:  # (not dict.pop: see note_packed)
            del module.__dict__["_tq_versions_before"]


def compact_safe_repack(repack: Callable) -> Callable:
    """Wraps a module's ``_repack`` (which packs from ``qweight``): a compact module's weight is
    rebuilt before, and the module compacted again after (not inside a trace, which keeps the
    module as it leaves it)."""
    @functools.wraps(repack)
    def wrapped(self, *args, **kwargs):
        if not is_compact(self):
            # another module's placeholder put in place (load_state_dict(..., assign=True) or
            # functional_call with a state_dict(keep_vars=True)): the weight it stands for
            r = _rebuild_of(self._buffers.get("qweight"))
            if r is not None:
                self._buffers["qweight"] = r()
            if torch.compiler.is_compiling():
                return repack(self, *args, **kwargs)
            return _versioned_repack(repack, self, *args, **kwargs)
        _check_placeholder_unwritten(self)
        if torch.compiler.is_compiling():  # (no lock in a graph)
            with expanded(self):
                return repack(self, *args, **kwargs)
        with _REPACK_LOCK, expanded(self):
            return _versioned_repack(repack, self, *args, **kwargs)

    wrapped._tq_compact_safe = True
    return wrapped


# Weights rebuilt for the pickle of a process being started (spawn / forkserver: the arguments
# of ctx.Process and torch.multiprocessing.spawn, a DataLoader's dataset), per Popen of that
# process. torch's ForkingPickler reduction moves a CPU tensor to shared memory and passes the
# child its file descriptor by number, which the start method hands over only after the whole
# process object is pickled: a weight rebuilt for the pickle alone was freed before that (its
# descriptor closed, or its number reused by the next layer's rebuilt weight, another buffer).
# Kept with the Popen rather than by expanding the module: the parent stays compact (a weight
# moved to shared memory would not compact again). While kept, the read-back gives that weight
# again (the next child shares it too), and the child maps the same pages (a shared weight: it
# keeps it, as after share_memory()), so this costs no memory then; released with the Process.
_SPAWNING = weakref.WeakKeyDictionary()


def _keep_while_spawning(w: torch.Tensor) -> bool:
    """Keeps w alive with the process being started, if one is (w is pickled for it). Returns
    whether one is."""
    from multiprocessing import context

    popen = context.get_spawning_popen()
    if popen is None:
        return False
    if w.device.type != "cpu":
        # (CUDA IPC keeps a sent block alive until the child releases it: a copy kept here
        # would hold the weight twice on the GPU for the child's whole run)
        return True
    try:
        _SPAWNING.setdefault(popen, []).append(w)
    except TypeError:  # (a Popen of another kind, without weak references: not kept, as before)
        pass
    return True


class CompactWeight:
    """Mixin of the modules with a ``qweight`` buffer and a packed layout built from it (they define
    ``_unpack_qweight(kernel_buffers, shape) -> qweight``, reading only the attributes named in
    ``_unpack_attrs``): the hooks that keep a compact module's behaviour that of one holding both."""

    _unpack_attrs = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        f = cls.__dict__.get("_repack")
        if f is not None and not getattr(f, "_tq_compact_safe", False):
            cls._repack = compact_safe_repack(f)

    def __getattr__(self, name):
        # (only names that are not plain attributes get here: buffers, parameters, submodules)
        if name == "qweight" and "_tq_compact" in self.__dict__:
            if torch.compiler.is_compiling():
                # The module is not changed inside a trace: the weight computed in the graph from the
                # layout, dead code where only its shape / dtype is read (x.to(layer.qweight.dtype)),
                # which AOT autograd, inductor and ExportedProgram.run_decompositions drop
                w = _traced_read(self, values=False)
                return self._buffers["qweight"] if w is None else w
            expand(self)
        return super().__getattr__(name)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if not keep_vars:
            adopt_handed(self)  # (a write into the weight an earlier state dict handed out)
        ph = self._buffers.get("qweight")  # (before: another thread may expand the module meanwhile)
        super()._save_to_state_dict(destination, prefix, keep_vars)
        # (keep_vars=True asks for the module's own tensors, as torch.jit.trace does to find the
        # module's state in a graph: the placeholder, which holds no values to read by mistake)
        r = None if keep_vars else _rebuild_of(ph)
        if r is not None and prefix + "qweight" in destination:
            w = destination[prefix + "qweight"] = r()
            if ph is self.__dict__.get("_tq_compact", (None,))[0] and not torch.compiler.is_compiling():
                note_handed(self, w)  # (a write into it reaches the module, as into its own tensor)

    def _portable_state(self, state: dict) -> dict:
        """For __getstate__: the pickled state with the portable weight (a packed layout is per
        machine) and a note to compact again when loaded."""
        if "_tq_handed" in state:  # (this module's state dicts are not the copy's)
            state = dict(state)
            del state["_tq_handed"]
        bufs = state.get("_buffers", {})
        r = _rebuild_of(bufs.get("qweight"))
        if r is None:
            return state
        state = dict(state)
        bufs = type(bufs)(bufs)
        ph, w = bufs["qweight"], r()
        bufs["qweight"] = w
        state["_buffers"] = bufs
        spawning = _keep_while_spawning(w)
        rec = state.get("_tq_packed_from")
        if (spawning and rec is not None and bufs.get(rec[3]) is rec[0] and any(t is ph for t in rec[1])
                and not _sources_changed(self, rec, False)):
            # The child shares this process's tensors (torch moves them to shared memory): its
            # layout recorded as built from the weight it gets, so that it runs the layout shared
            # with this process, which a load here refills, as it refills the scales it shares (a
            # layout of the child's own would run with the new scales and the old weight).
            state["_tq_packed_from"] = (rec[0], tuple(w if t is ph else t for t in rec[1])) + tuple(rec[2:])
        if state.pop("_tq_compact", None) is not None:
            state["_tq_compact_again"] = True
        return state

    def _compact_again(self) -> None:
        """For __setstate__."""
        if self.__dict__.pop("_tq_compact_again", False):
            compact(self)


# ---------------------------------------------------------------- the layouts' inverses
def unpack_linear_cpu(packed: torch.Tensor, N: int, K: int) -> torch.Tensor:
    """pack_weight's CPU layout -> the int8 [N, K] weight: panels of 16 channels, each K groups of
    4 (16 channels x 4 bytes), then the K % 4 tail (16 channels x r bytes); channels past N zero."""
    P = packed.shape[0]
    flat = packed.reshape(P, -1)
    full = K // 4 * 4
    r = K - full
    main = flat[:, :full * 16].reshape(P, full // 4, 16, 4).permute(0, 2, 1, 3).reshape(P * 16, full)
    if r:
        tail = flat[:, full * 16:full * 16 + 16 * r].reshape(P * 16, r)
        main = torch.cat([main, tail], 1)
    return main[:N].clone(memory_format=torch.contiguous_format)  # (its own storage, no padding rows)


def unpack_conv_cpu(packed: torch.Tensor, shape, groups: int) -> torch.Tensor:
    """pack_conv_weight's CPU layouts -> the int8 [Cout, Cin / groups, *kernel] weight. Depthwise:
    [*kernel, C], the channels of a tap contiguous. Otherwise 1-D: per group the [Ng, taps x Cg]
    GEMM operand (taps in (kd, kh, kw) order, channels inner; each kernel row of KW x Cg bytes
    padded to a multiple of 4 when it is shorter than 64 bytes, not one, and there are several)
    in the Linear's 16-channel panels, then a 32-byte record of the shape."""
    Cout, Cg = shape[0], shape[1]
    taps = math.prod(shape[2:])
    if packed.dim() != 1:
        return packed.reshape(taps, Cout).t().clone(memory_format=torch.contiguous_format).reshape(shape)
    Ng, KW = Cout // groups, shape[-1]
    rlen, nrows = KW * Cg, taps // KW
    rb = (rlen + 3) // 4 * 4 if rlen % 4 and rlen < 64 and nrows > 1 else rlen
    Kp, P = nrows * rb, (Ng + 15) // 16
    body = packed[:groups * P * Kp * 16].reshape(groups * P, Kp * 16)
    w = unpack_linear_cpu(body, groups * P * 16, Kp).reshape(groups, P * 16, nrows, rb)[:, :Ng, :, :rlen]
    return w.reshape(Cout, taps, Cg).permute(0, 2, 1).clone(memory_format=torch.contiguous_format).reshape(shape)


def unpack_by_probes(pack: Callable[[torch.Tensor], torch.Tensor], packed: torch.Tensor, shape) -> torch.Tensor:
    """The int8 weight of `shape` that pack (weight -> the layout's packed tensor) turned into
    `packed`, for a layout that moves each weight byte somewhere (and pads or records the shape
    around them): the slots holding weights are where packing ones and zeros differ, and packing
    each byte of every weight's index tells which weight each slot holds."""
    if torch.compiler.is_compiling():  # (nonzero and a packing op per probe: no graph)
        raise _ProbedLayout()
    n = math.prod(shape)
    dev = packed.device

    def packed_bytes(w):
        return pack(w).reshape(-1).view(torch.uint8)

    kw = dict(dtype=torch.int8, device=dev)
    slots = (packed_bytes(torch.ones(shape, **kw)) != packed_bytes(torch.zeros(shape, **kw))).nonzero().flatten()
    if slots.numel() != n:
        raise ValueError("the packed layout does not hold each weight once")
    ar = torch.arange(n, device=dev)
    idx = torch.zeros(n, dtype=torch.int64, device=dev)
    for d in range(max(1, math.ceil(math.log2(max(n, 2)) / 8))):
        digit = ((ar >> (8 * d)) & 255).to(torch.uint8).view(torch.int8).reshape(shape)
        idx |= packed_bytes(digit)[slots].to(torch.int64) << (8 * d)
    if not bool((torch.bincount(idx, minlength=n) == 1).all()):
        raise ValueError("the packed layout does not hold each weight once")
    out = torch.empty(n, **kw)
    out[idx] = packed.reshape(-1).view(torch.uint8)[slots].view(torch.int8)
    return out.reshape(shape)


def unpack_int4_cpu(packed: torch.Tensor, N: int, K: int, group_size: int) -> torch.Tensor:
    """int4_pack_weight's CPU layout [panels, groups, record] -> the uint4 values uint8 [N, K]:
    a record's first group_size / 8 blocks of 64 bytes hold 16 channels x 8 values, value j of
    channel c in byte 4 c + (j % 4) of block j // 8, low nibble for j % 8 < 4."""
    P, G, _ = packed.shape
    bpg = group_size // 8
    vals = packed[:, :, :bpg * 64].reshape(P, G, bpg, 16, 4)
    v = torch.cat([vals & 0x0F, vals >> 4], -1)  # [P, G, bpg, 16, 8]
    return v.permute(0, 3, 1, 2, 4).reshape(P * 16, G * group_size)[:N, :K]


def compact_modules(model: nn.Module) -> nn.Module:
    """Compacts every quantized module in model that can be (see the module's docstring); returns
    model."""
    for m in model.modules():
        if isinstance(m, CompactWeight):
            compact(m)
    return model

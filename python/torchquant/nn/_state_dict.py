"""State-dict loading checks shared by the quantized modules."""
import sys
import threading
from typing import Optional

import torch
from torch import nn


def integer_load_errors(module: nn.Module, state_dict, prefix: str, keys) -> list:
    """Errors for the integer buffers `keys` of module that state_dict would fill from a tensor of
    another dtype: copy_ would cast it without a word (a float 0.7 becomes 0)."""
    errors = []
    for key in keys:
        have, given = module._buffers.get(key), state_dict.get(prefix + key)
        if isinstance(have, torch.Tensor) and isinstance(given, torch.Tensor) and given.dtype != have.dtype:
            what = "weight" if key == "qweight" else key
            errors.append(f"{prefix}{key}: the quantized {type(module).__name__}'s {what} must be {have.dtype}, "
                          f"got dtype {given.dtype}")
    return errors


_OPTIONAL = ("input_scale", "float_input_scale", "float_input_zero_point")


def qparam_load_errors(module: nn.Module, state_dict, prefix: str) -> list:
    """Errors for the qparams buffers of module (names ending in ``scale`` / ``zero_point``) that
    state_dict would fill with a bad value: a scale that is not floating point (an int32 0.05 is 0)
    or not finite and > 0, a zero point that is not an integer (copy_ would truncate 127.6 to
    127). The kernels would refuse some of these only at the next call, after the load kept them."""
    errors = []
    # The module's buffers, and the optional ones its loader registers when state_dict has them
    # (an int4 layer's input_scale, an int8 one's float-input qparams).
    for key in list(module._buffers) + [k for k in _OPTIONAL if k not in module._buffers]:
        given = state_dict.get(prefix + key)
        if not isinstance(given, torch.Tensor):
            continue
        what = f"{prefix}{key}: the quantized {type(module).__name__}'s {key}"
        meta = given.device.type == "meta"  # (a meta state dict, load_state_dict(assign=True): no values to check)
        if key.endswith("scale"):
            if not given.is_floating_point():
                errors.append(f"{what} must be a floating-point tensor, got dtype {given.dtype}")
                continue
            bad = None if meta else ~(torch.isfinite(given) & (given > 0))
            if bad is not None and bool(bad.any()):
                at = bad.reshape(-1).nonzero().flatten()
                first = given.reshape(-1)[at[0]].item()
                where = f" at flat position(s) {at[:10].tolist()}" if given.numel() > 1 else ""
                errors.append(f"{what} must be > 0 and finite, got {first}{where}")
        elif key.endswith("zero_point"):
            if given.is_floating_point() or given.is_complex() or given.dtype == torch.bool:
                errors.append(f"{what} must be an integer tensor, got dtype {given.dtype}")
                continue
            lo, hi = _zero_point_range(module, key)
            if lo is None or given.numel() == 0 or meta:
                continue
            bad = (given < lo) | (given > hi)
            if bool(bad.any()):
                at = bad.reshape(-1).nonzero().flatten()
                first = given.reshape(-1)[at[0]].item()
                where = f" at flat position(s) {at[:10].tolist()}" if given.numel() > 1 else ""
                other = (-128, 127) if lo == 0 else (0, 255)
                hint = (" (it lies in the other 8-bit activation dtype's codes: a checkpoint of a model quantized with "
                        "another qconfig? build the model to load into with that qconfig)"
                        if other[0] <= first <= other[1] and (lo, hi) in ((0, 255), (-128, 127)) else "")
                errors.append(f"{what} must lie in [{lo}, {hi}], got {first}{where}{hint}")
    return errors


def _zero_point_range(module: nn.Module, key: str):
    """The range an activation zero point must lie in (the codes of the module's activation
    dtype; a value past it would be refused by the kernels at the next call only, or wrapped by
    the int32 buffer's copy_), or (None, None) where the module does not say (weight zero points
    are checked by their modules)."""
    if key == "float_input_zero_point":
        fmt = module.__dict__.get("_float_input_dtype")
        if fmt is not None:
            return fmt[1], fmt[2]
    elif key != "zero_point":
        return None, None
    lo, hi = getattr(module, "qmin", None), getattr(module, "qmax", None)
    if isinstance(lo, int) and isinstance(hi, int):
        return lo, hi
    from ..qtensor import _QDTYPES, _QRANGE

    storage = {q: st for st, q in _QDTYPES.items()}.get(getattr(module, "dtype", None))
    return _QRANGE[storage] if storage is not None else (None, None)


def activation_qparams(owner: str, scale, zero_point, lo: int, hi: int):
    """A constructor's per-tensor ``scale`` and ``zero_point`` as the float32 / int32 [1] buffers
    they become, checked first: a scale > 0 and finite, a zero point an integer in [lo, hi] (a
    zero point of 300 wrapped or failed at the first call only, a NaN scale gave NaN codes)."""
    s = torch.as_tensor(scale, dtype=torch.float32).reshape(1).clone()
    z = torch.as_tensor(zero_point)
    if s.device.type != "meta" and not bool((torch.isfinite(s) & (s > 0)).all()):
        raise ValueError(f"{owner}: argument 'scale' must be > 0 and finite, got {s.item()}")
    if z.numel() != 1 or z.is_complex() or z.dtype == torch.bool or (
            z.device.type != "meta" and z.is_floating_point() and not bool((z == z.round()).all())):
        raise ValueError(f"{owner}: argument 'zero_point' must be one integer, got {zero_point!r}")
    if z.device.type != "meta" and not lo <= z.item() <= hi:
        raise ValueError(f"{owner}: argument 'zero_point' must lie in [{lo}, {hi}], got {z.item():g}")
    return s, z.to(torch.int32).reshape(1).clone()


def qparams_repr(scale: torch.Tensor, zero_point: torch.Tensor) -> str:
    """'scale=..., zero_point=...' for a module's repr; a skeleton on the meta device has no values
    to show (its repr raised on .item())."""
    if scale.is_meta or zero_point.is_meta:
        return "scale=(meta), zero_point=(meta)"
    return f"scale={scale.item():.6g}, zero_point={int(zero_point.item())}"


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def record_activation_dtype(module: nn.Module, state_dict, prefix, local_metadata) -> None:
    """state_dict post-hook of the modules with int8 activations: their dtype (quint8 / qint8) in
    the module's metadata (kept by torch.save and torch.load(weights_only=True)), checked on load:
    no tensor of the state dict tells a quint8 checkpoint from a qint8 one, and one loaded into
    the other would clip or wrap every activation without a word."""
    if isinstance(getattr(module, "dtype", None), torch.dtype):
        local_metadata["activation_dtype"] = _dtype_name(module.dtype)


def register_activation_dtype_hook(module: nn.Module) -> None:
    if record_activation_dtype not in [getattr(h, "hook", h) for h in module._state_dict_hooks.values()]:
        module.register_state_dict_post_hook(record_activation_dtype)


def activation_dtype_errors(module: nn.Module, local_metadata, prefix: str) -> list:
    """The error for a checkpoint whose recorded activation dtype is not the module's (none when
    the state dict has no record: torch.ao's, or one saved before the record existed)."""
    saved = (local_metadata or {}).get("activation_dtype")
    have = getattr(module, "dtype", None)
    if saved is None or not isinstance(have, torch.dtype) or saved == _dtype_name(have):
        return []
    where = prefix[:-1] if prefix else type(module).__name__
    return [f"{where}: the checkpoint's activations are {saved}, this quantized {type(module).__name__}'s are "
            f"{_dtype_name(have)} (codes of one read as the other would be clipped or wrapped): build the model "
            f"to load into with the same qconfig (its activation observer's dtype)"]


_OUTPUT_QPARAMS = ("scale", "zero_point", "float_input_scale", "float_input_zero_point")


def own_loaded_qparams(module: nn.Module, state_dict, prefix: str) -> None:
    """Gives the module fresh qparam buffers for the ones the state dict is about to load: the
    QTensors it returned earlier hold its buffers as their scale and zero point (no copy per
    call), and load_state_dict's copy_ into them would change the values of those outputs after
    the fact (a quantized tensor owns its qparams). Not for buffers in shared memory
    (``share_memory()``): there the other processes must read the new values, so the load
    writes them in place, and QTensors this module returned before see them."""
    b = module._buffers
    for k in _OUTPUT_QPARAMS:
        t = b.get(k)
        # (not one in shared memory, share_memory(): the processes running the model read the
        # new values from it, as they read the new weights)
        if isinstance(t, torch.Tensor) and prefix + k in state_dict and not (t.device.type == "cpu" and t.is_shared()):
            with torch.inference_mode(False):  # (a load under inference mode: still a normal tensor)
                b[k] = t.clone()


def qparam_load_pre_hook(module: nn.Module, state_dict, prefix, local_metadata, strict, missing_keys,
                         unexpected_keys, error_msgs) -> None:
    """load_state_dict pre-hook of the modules with output qparams and no loader of their own:
    the checks of qparam_load_errors and of the recorded activation dtype; a refused module keeps
    its values (load_state_dict raises)."""
    errors = activation_dtype_errors(module, local_metadata, prefix) + qparam_load_errors(module, state_dict, prefix)
    if errors:
        error_msgs.extend(errors)
        for key, have in module._buffers.items():
            if prefix + key in state_dict and have is not None:
                state_dict[prefix + key] = have
    else:
        own_loaded_qparams(module, state_dict, prefix)


def refuse_parametrized(module: nn.Module, err: Optional[KeyError] = None) -> None:
    """A TypeError naming the module's parametrized buffers (``torch.nn.utils.parametrize.
    register_parametrization`` moves a buffer into ``module.parametrizations``) when it has any:
    its kernels read the buffers, and a layout packed from them, as they are (torch.ao's int8
    modules refuse a parametrization at registration). ``err``: the KeyError of a read of
    ``module._buffers[name]``; for a name that is not parametrized this returns, and the caller
    re-raises it."""
    params = module.__dict__.get("_modules", {}).get("parametrizations")
    names = list(params.keys()) if isinstance(params, nn.ModuleDict) else []
    if not names or (err is not None and (not err.args or err.args[0] not in names)):
        return
    cls = type(module)
    if cls.__name__.startswith("Parametrized") and len(cls.__bases__) == 1:
        cls = cls.__bases__[0]  # (the class register_parametrization made for the module: named as its base)
    shown = ("buffer " if len(names) == 1 else "buffers ") + ", ".join(repr(n) for n in names)
    raise TypeError(
        f"{cls.__name__}: its {shown} {'is' if len(names) == 1 else 'are'} parametrized (torch.nn.utils.parametrize."
        "register_parametrization), which torchquant's int8 / int4 modules do not support: their kernels read the "
        "buffers, and a layout packed from them, as they are. Remove the parametrization (torch.nn.utils.parametrize."
        f"remove_parametrizations(module, {names[0]!r})); to change the values, write them into the buffers or load "
        "a state dict") from None


# ---------------------------------------------------------------- packed weights
# A quantized module's kernel layout (non-persistent buffers) is built from its state (qweight,
# and for some its qparams) at construction, load_state_dict and .to(). Something that puts
# other tensors in place of that state without going through them (torch.func.functional_call
# with another model's state dict, an assignment `module.qweight = t`), or changes it in place
# (`module.qweight.mul_(2)`, an in-place op on a dynamic Linear's `.weight` view), would leave
# the layout of the old weights in use: the forwards call repack_if_stale first.
def _version_of(t):
    """t's version counter (bumped by every in-place change), or None for an inference tensor,
    which has none."""
    try:
        return t._version
    except (AttributeError, RuntimeError):
        return None


def _normal_sources(module: nn.Module, sources) -> None:
    """Replaces each source buffer that is an inference tensor (a module converted or loaded
    under torch.inference_mode) by a normal copy: an inference tensor has no version counter,
    and an in-place change to it inside inference mode would go unseen; a normal tensor's
    counter is bumped there too. Not while tracing (a trace holds no module state)."""
    b = module._buffers
    for k in sources:
        t = b[k]
        if isinstance(t, torch.Tensor) and not torch.compiler.is_compiling() and t.is_inference():
            with torch.inference_mode(False):
                b[k] = t.clone()


def _refill_shared(module: nn.Module, sources) -> None:
    """Puts each rebuilt kernel buffer back into the CPU storage of the one it replaces where
    that one is in shared memory (``share_memory()``: processes running the model read the
    layout from there) and has the same shape, when the layout was rebuilt from the same source
    tensors, changed in place (``load_state_dict``'s copies into the shared weights and scales:
    without the refill the other processes ran the old layout with the new scales, the outputs
    of neither model). Sources put in place of the shared ones (``load_state_dict(assign=True)``,
    ``torch.func.functional_call``) are this process's own: the shared layout stays the shared
    sources'. Like every in-place update of a shared model (as torch's own parameters), a call
    running in another process meanwhile may read a mix."""
    old = module.__dict__.get("_tq_packed_bufs")
    rec = module.__dict__.get("_tq_packed_from")
    if not old or rec is None:
        return
    # the same source tensors (identity only: the load's copies bumped their versions)
    if tuple(rec[2]) != tuple(sources) or _sources_changed(module, rec, traced=True):
        return
    b = module._buffers
    for k, t in old.items():
        new = b.get(k)
        if (new is not None and new is not t and t.device.type == "cpu" and new.device == t.device
                and t.is_shared() and new.dtype == t.dtype and new.shape == t.shape and new.stride() == t.stride()
                and not t.is_inference()):
            with torch.no_grad():
                t.copy_(new)
            b[k] = t


def note_packed(module: nn.Module, sources, packed: str) -> None:
    """Records which tensors (and versions of them) the packed buffer `packed` was built from
    (buffer names `sources`). Called last by the modules' ``_repack``, after every packed buffer
    is in place: a forward that finds the record current reads a complete layout."""
    _normal_sources(module, sources)
    b = module._buffers
    # (shared memory is for eager processes: a trace holds no module state)
    traced = torch.compiler.is_compiling()
    if not traced:
        _refill_shared(module, sources)
    src = b[sources[0]]
    if not traced and isinstance(src, torch.Tensor) and src.device.type == "cpu" and src.is_shared():
        # A layout built from shared sources is shared too (share_memory() and _apply rebuild it
        # after moving the sources): processes that fork from here read it, and a later refill
        # reaches them.
        for k in module._non_persistent_buffers_set:
            t = b.get(k)
            if isinstance(t, torch.Tensor) and t.device.type == "cpu" and not t.is_shared() and not t.is_inference():
                t.share_memory_()
    # the kernel buffers now in place, for the next rebuild's _refill_shared
    module.__dict__["_tq_packed_bufs"] = {k: b[k] for k in module._non_persistent_buffers_set
                                          if isinstance(b.get(k), torch.Tensor)}
    srcs = tuple(b[k] for k in sources)
    # The versions the sources had before the repack read them (repack_versions, taken by the
    # wrapper of every _repack): a write landing while the layout was built (another thread's)
    # then leaves it stale, and the next call rebuilds it; versions read now would mark that
    # write as packed.
    # (get and del rather than dict.pop: torch 2.11's Dynamo cannot trace a pop on __dict__, and a
    # repack can run inside a compiled forward)
    before = module.__dict__.get("_tq_versions_before") or {}
    if "_tq_versions_before" in module.__dict__:
        del module.__dict__["_tq_versions_before"]
    versions = tuple(before[id(t)][1] if id(t) in before and before[id(t)][0] is t else _version_of(t) for t in srcs)
    module.__dict__["_tq_packed_from"] = (b[packed], srcs, tuple(sources), packed, versions)
    # the first source and its version, for the forwards' inline check (an identity test and a
    # version comparison per call); the version written last, so that a thread reading both sees
    # them current only once the whole record is
    module.__dict__["_tq_src0"] = srcs[0] if "_tq_handed" not in module.__dict__ else None
    module.__dict__["_tq_v0"] = versions[0]


def repack_versions(module: nn.Module) -> None:
    """Called before a module's _repack reads its buffers: their versions now, for note_packed."""
    module.__dict__["_tq_versions_before"] = {id(t): (t, _version_of(t)) for t in module._buffers.values()
                                              if isinstance(t, torch.Tensor)}


# A compact module's state_dict() holds its weight rebuilt from the layout (nn/_compact.py). A
# module's state dict holds references to its tensors, and code writes into them (copying one
# model's weights into another's through the values of state_dict(), as EMA and target networks
# do): the module must see such a write. The rebuilt weight handed out is recorded, and held
# until the module next looks at it (its next call, state_dict(), weight read): a state dict
# written and dropped at once must still reach the module. Until then, and while the caller
# keeps it, the forwards' inline check is off (_tq_src0 None) and each call looks at its
# version. Written, it becomes the module's weight (the module is then an ordinary one, its
# weight that tensor, as an uncompacted module's would be); unwritten and held by nothing else,
# it is dropped.
def note_handed(module: nn.Module, w: torch.Tensor) -> None:
    """state_dict() handed out ``w``, the compact module's weight rebuilt."""
    module.__dict__["_tq_handed"] = (w, w._version)
    module.__dict__["_tq_src0"] = None


def _held_elsewhere(rec) -> bool:
    # references: the record, getrefcount's argument; any other is the caller's
    return sys.getrefcount(rec[0]) > 2


def adopt_handed(module: nn.Module) -> None:
    """The handed-out weight made the module's own if it was written since, dropped if nothing
    else holds it (or if the module holds its weight again: reading it back gives that same
    tensor)."""
    rec = module.__dict__.get("_tq_handed")
    if rec is None:
        return
    compact = module.__dict__.get("_tq_compact")
    b = module._buffers
    if compact is not None and b.get("qweight") is not compact[0]:
        return  # (another tensor in its place for now, as torch.func.functional_call puts: kept)
    if compact is None and b.get("qweight") is rec[0]:
        return  # (the module holds that tensor, expanded: kept for when it is compacted again)
    if compact is not None:
        if rec[0]._version == rec[1]:
            if _held_elsewhere(rec):
                return  # (unwritten, still held: the next call looks again)
        else:
            with _REPACK_LOCK:
                if module.__dict__.get("_tq_handed") is rec and b.get("qweight") is compact[0]:
                    if compact[0]._version == compact[1]:  # (a write into the placeholder: the call reports it)
                        b["qweight"] = rec[0]
                        del module.__dict__["_tq_compact"]
    with _REPACK_LOCK:
        if module.__dict__.get("_tq_handed") is rec:
            del module.__dict__["_tq_handed"]
            packed = module.__dict__.get("_tq_packed_from")
            if packed is not None:
                module.__dict__["_tq_src0"] = packed[1][0]


def renote_packed(module: nn.Module) -> None:
    """After unpickling or deep-copying: the versions recorded are the old tensors' (a copy's
    counter starts again), so they are recorded anew; the pickled layout was current when
    pickled (the modules' __getstate__ repacks first)."""
    rec = module.__dict__.get("_tq_packed_from")
    b = module._buffers
    # (a source replaced since, whose repack failed when pickled, keeps the old record: the next
    # call's identity check repacks)
    if rec is not None and b.get(rec[3]) is rec[0] and all(b.get(k) is t for k, t in zip(rec[2], rec[1])):
        note_packed(module, rec[2], rec[3])


def repack_for_copy(module: nn.Module) -> None:
    """Before a module is pickled or deep-copied: its layout brought up to date, so that the copy
    (whose version counters start again) carries the weights as they are. A layout that cannot
    be built now (a weight on the meta device) is left to the copy's first call."""
    try:
        repack_if_stale(module)
    except (RuntimeError, NotImplementedError):
        pass


# One lock for every module's repack: repacks are rare (after a weight changed), and threads
# that run one model and find its layout stale at once must not each rebuild it while the others
# read it half replaced (the packed weight of the new weights with the old column sums).
_REPACK_LOCK = threading.RLock()


def _sources_changed(module: nn.Module, rec, traced: bool) -> bool:
    b = module._buffers
    for name, t, v in zip(rec[2], rec[1], rec[4]):
        now = b.get(name)
        # (a trace sees no in-place change between calls, and a version is a value it cannot guard on)
        if now is not t or (v is not None and not traced and now._version != v):
            return True
    return False


def repack_if_stale(module: nn.Module) -> None:
    """Rebuilds the packed buffers when one of their source buffers is no longer the tensor they
    were built from, or was changed in place since, while the packed buffer still is the one
    built (a caller that puts its own packed buffers in place, as torch.func.stack_module_state's
    ensembles do, is left alone). Thread-safe: a layout found stale is rebuilt once, under a
    lock, and a thread that finds it being rebuilt waits for it."""
    if "_tq_handed" in module.__dict__ and not torch.compiler.is_compiling():
        adopt_handed(module)
    rec = module.__dict__.get("_tq_packed_from")
    if rec is None:
        return
    b = module._buffers
    if torch.compiler.is_compiling():  # (no lock in a graph, and no other thread in a trace)
        if b.get(rec[3]) is rec[0] and _sources_changed(module, rec, True):
            module._repack()
        return
    if b.get(rec[3]) is rec[0] and not _sources_changed(module, rec, False):
        return  # current: the usual case, without the lock
    with _REPACK_LOCK:
        # Decided again under the lock: another thread may have rebuilt it meanwhile, or be
        # between its assignments of the packed buffers (a packed buffer that is not the
        # recorded one is the caller's own only when no rebuild is under way).
        rec = module.__dict__.get("_tq_packed_from")
        if b.get(rec[3]) is rec[0] and _sources_changed(module, rec, False):
            module._repack()


class OutputDtype:
    """Mixin of the modules whose float output takes the float dtype of the model they belong
    to (DeQuantize, the quantized embeddings): float32, or float16 / bfloat16 / float64. The dtype
    is held by an empty non-persistent buffer, so that ``.half()`` / ``.float()`` of the converted
    model move it with the model's float modules and the state dict does not hold it."""

    def _init_output_dtype(self, dtype: Optional[torch.dtype] = None, device=None) -> None:
        self.register_buffer("_output_dtype", torch.empty(0, dtype=dtype or torch.float32, device=device),
                             persistent=False)

    def _restore_output_dtype(self, dtype: Optional[torch.dtype] = None) -> None:
        """In __setstate__: a module pickled before the dtype was a buffer returned ``dtype``
        (float32 when None)."""
        if "_output_dtype" not in self._buffers:
            self._init_output_dtype(dtype)

    @property
    def output_dtype(self) -> Optional[torch.dtype]:
        """The dtype of the float output: None for float32."""
        dt = self._buffers["_output_dtype"].dtype
        return None if dt == torch.float32 else dt

    def _to_output_dtype(self, y: torch.Tensor) -> torch.Tensor:
        # y in float32 (as the kernels give it), cast once to the model's dtype (nothing for float32)
        dt = self._buffers["_output_dtype"].dtype
        return y if dt == torch.float32 else y.to(dt)


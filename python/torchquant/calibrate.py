"""Calibration: run data through an observed model, and merge observers' statistics across
torch.distributed ranks.

    >>> prepared = torchquant.prepare(model)
    >>> torchquant.calibrate(prepared, loader, num_batches=32)
    >>> torchquant.sync_observers(prepared)        # with torch.distributed: every rank agrees
    >>> quantized = torchquant.convert(prepared)
"""
import inspect
import itertools
import warnings
from collections.abc import Mapping
from typing import Iterable, Optional, Tuple

import torch
from torch import nn

from . import _ops  # noqa: F401
from ._stack import user_stacklevel
from .observer import HistogramObserver, MinMaxObserver, ObserverBase, PerChannelMinMaxObserver

__all__ = ["calibrate", "sync_observers"]

ops = torch.ops.torchquant


def _name_observers(model: nn.Module):
    for name, mod in model.named_modules():
        if isinstance(mod, ObserverBase) and mod.observer_name is None:
            mod.observer_name = name or type(model).__name__


def _model_device(model: nn.Module) -> Optional[torch.device]:
    """Where ``model`` (a model, or one module) runs: its first tensor's device. A quantized
    layer's qweight is a placeholder on the meta device (its weight is in the kernel layout),
    which says nothing of that (inputs moved there failed in the first int8 layer); a model
    wholly on meta (a dry run) stays there."""
    meta = None
    for t in itertools.chain(model.parameters(), model.buffers()):
        if not t.is_meta:
            return t.device
        meta = t.device
    return meta


def _to(x, device):
    if device is None:
        return x
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, nn.utils.rnn.PackedSequence):  # (its batch_sizes stay on the CPU, as torch needs)
        return x.to(device)
    if isinstance(x, tuple) and hasattr(type(x), "_fields"):  # a namedtuple: built from its fields
        return type(x)(*(_to(v, device) for v in x))
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device) for v in x)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, Mapping):  # a tokenizer's BatchEncoding (a UserDict): its own type where it can be rebuilt
        moved = {k: _to(v, device) for k, v in x.items()}
        try:
            return type(x)(moved)
        except Exception:
            return moved
    return x


def _batch_args(batch):
    """(args, kwargs) of ``model`` for one batch: a mapping (a Hugging Face tokenizer's output)
    as keyword arguments, an ``(input, target)`` tuple or list by its input, anything else as
    the input. A PackedSequence (a tuple of data and batch sizes) is one input, a recurrent
    model's: read as a pair, its data alone would run as one unbatched sequence."""
    if isinstance(batch, Mapping):
        return (), dict(batch)
    if isinstance(batch, (tuple, list)) and not isinstance(batch, nn.utils.rnn.PackedSequence):
        return (batch[0],), {}
    return (batch,), {}


def _check_batch(fn: str, index: int, batch) -> None:
    """A ValueError for a batch that is an empty tuple or list: it has no input to read."""
    if isinstance(batch, (tuple, list)) and len(batch) == 0:
        raise ValueError(f"{fn}: batch {index} of argument 'data' is an empty {type(batch).__name__}: a tuple or list "
                         "batch is read as (input, target, ...), and its first element is the model's input")


def _call(model: nn.Module, batch, device=None):
    """``model`` on one batch, read as :func:`_batch_args` says."""
    args, kwargs = _batch_args(batch)
    return model(*_to(args, device), **_to(kwargs, device))


def _batch_error(fn: str, model: nn.Module, batch, error: TypeError) -> Optional[TypeError]:
    """A TypeError saying how ``fn`` reads a batch, when ``error`` (raised by ``model`` on
    ``batch``) comes from the batch not fitting the model's ``forward`` (a model with two inputs
    given ``(a, b)``: ``b`` was read as the target); None for any other TypeError (one raised
    inside the forward), which is raised as it is. Raise it ``from error``."""
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):  # (a forward with no signature Python can read)
        return None
    args, kwargs = _batch_args(batch)
    try:
        sig.bind(*args, **kwargs)
        return None  # the arguments fit: the error came from inside the forward
    except TypeError:
        pass
    names = [n for n, p in sig.parameters.items()
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty]
    example = "{" + ", ".join(f"'{n}': {n}" for n in (names or ["x", "mask"])) + "}"
    return TypeError(
        f"{fn}: a batch does not fit {type(model).__name__}.forward{sig} ({error}). A batch is read as: a tensor, "
        "the model's one input (model(x)); a tuple or list, (input, target, ...), of which only the first element "
        "is passed (model(batch[0])); a dict (a tokenizer's output), keyword arguments (model(**batch)). For a "
        f"model with several inputs, give each batch as a dict of forward's arguments: [{example}, ...]")


def _fake_quant_types() -> Tuple[tuple, tuple]:
    """(fake-quant bases, fixed-qparams fake-quants): torchquant's and torch.ao's."""
    from .fake_quantize import FakeQuantizeBase, FixedQParamsFakeQuantize
    try:
        from torch.ao.quantization.fake_quantize import FakeQuantizeBase as _AoFakeQuantizeBase
        from torch.ao.quantization.fake_quantize import FixedQParamsFakeQuantize as _AoFixedQParamsFakeQuantize
    except ImportError:  # pragma: no cover
        return (FakeQuantizeBase,), (FixedQParamsFakeQuantize,)
    return (FakeQuantizeBase, _AoFakeQuantizeBase), (FixedQParamsFakeQuantize, _AoFixedQParamsFakeQuantize)


def _prepared_for_qat(model: nn.Module) -> bool:
    """Whether ``model`` holds fake-quants other than fixed-qparams ones (QAT modules' weight
    fake-quants, activation fake-quants). A static ``prepare`` of a model in training mode gives
    each nn.Hardsigmoid, nn.Sigmoid, nn.Softmax and nn.Tanh a FixedQParamsFakeQuantize too (torch.ao's
    rule): that alone is no QAT."""
    fake, fixed = _fake_quant_types()
    return any(isinstance(m, fake) and not isinstance(m, fixed) for m in model.modules())


def _warn_training_mode(model: nn.Module) -> None:
    """One warning when ``model`` is in training mode and holds BatchNorm layers (with running
    statistics) or Dropout layers in training mode: calibration would update the statistics and
    drop activations, and the int8 model be far from the float one (34 dB SQNR against 15 on a
    small CNN), with nothing said. A model prepared for QAT (:func:`_prepared_for_qat`) trains in
    that mode on purpose: no warning."""
    if not model.training or _prepared_for_qat(model):
        return
    bn = [(n, m) for n, m in model.named_modules()
          if m.training and isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    drop = [(n, m) for n, m in model.named_modules()
            if m.training and isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
    if bn or drop:
        what = " and ".join((["its BatchNorm layers update their running statistics on the calibration data"] if bn
                             else []) + (["its Dropout layers drop activations"] if drop else []))
        found = [f"{n} ({type(m).__name__})" for n, m in bn + drop]
        warnings.warn(f"calibrate: the model is in training mode, so {what} ({', '.join(found[:3])}"
                      f"{', ...' if len(found) > 3 else ''}): the int8 model would not match the float model in eval "
                      "mode; call .eval() on the model before prepare (prepare keeps its mode) or on the prepared "
                      "model before calibrate", UserWarning, stacklevel=user_stacklevel())


def calibrate(model: nn.Module, data: Iterable, num_batches: Optional[int] = None, progress: bool = True) -> nn.Module:
    """Runs ``data`` through ``model`` under ``torch.no_grad()`` so that its observers record
    statistics; returns the model. ``data`` yields tensors, ``(input, target)`` tuples (the
    target is ignored; a PackedSequence is one input), or mappings passed as keyword arguments
    (a Hugging Face tokenizer's output: ``model(**batch)``); inputs move to the model's device.
    ``num_batches`` stops early; ``progress`` shows a tqdm bar. The model's train/eval mode is
    left as it is (calibrate in eval mode, so that dropout and batch norm behave as at inference:
    a model in training mode with BatchNorm or Dropout layers in training mode gets a warning,
    unless prepared for QAT).
    For a model with several inputs, each batch is a dict of its ``forward``'s arguments; a batch
    that does not fit the ``forward`` raises a TypeError saying how batches are read.

    >>> model.eval()
    >>> torchquant.calibrate(prepared, [torch.randn(8, 16) for _ in range(4)], progress=False)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"calibrate: argument 'model' must be an nn.Module, got {type(model).__name__}")
    if num_batches is not None and (isinstance(num_batches, bool) or not isinstance(num_batches, int)):
        raise TypeError(f"calibrate: argument 'num_batches' must be an int or None, got {num_batches!r}")
    if num_batches is not None and num_batches < 0:
        raise ValueError(f"calibrate: argument 'num_batches' must be >= 0 or None, got {num_batches}")
    one_batch = (torch.Tensor, Mapping, nn.utils.rnn.PackedSequence)
    if isinstance(data, (str, bytes) + one_batch) or not hasattr(data, "__iter__"):
        # A tensor would be iterated row by row, each row run as a batch (a PackedSequence field
        # by field): refuse it too.
        raise TypeError("calibrate: argument 'data' must be an iterable of batches (a DataLoader, or a list of "
                        f"tensors, (input, target) tuples or dicts of keyword arguments), got {type(data).__name__}"
                        + (" (wrap a single batch in a list: [x])" if isinstance(data, one_batch) else ""))
    if isinstance(data, tuple) and data and all(isinstance(t, torch.Tensor) for t in data):
        # (x, y): one (input, target) batch (as report reads it) or two batches? Running y as a
        # batch would calibrate on the targets.
        raise TypeError(f"calibrate: argument 'data' is a tuple of {len(data)} tensors, which reads both as one "
                        "(input, target) batch and as a sequence of batches: pass a list, [(x, y)] for one batch "
                        "or [x1, x2, ...] for several")
    _warn_training_mode(model)
    _name_observers(model)
    device = _model_device(model)
    batches = data if num_batches is None else itertools.islice(data, num_batches)
    if progress:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover
            tqdm = None
        if tqdm is not None:
            # The bar's length: data's where it has one (a DataLoader over an IterableDataset
            # has __len__ but raises TypeError), num_batches where that is fewer.
            try:
                length = len(data)
            except TypeError:
                length = None
            total = num_batches if length is None else length if num_batches is None else min(num_batches, length)
            batches = tqdm(batches, total=total, desc="calibrate", unit="batch")
    with torch.no_grad():
        for i, batch in enumerate(batches):
            _check_batch("calibrate", i, batch)
            try:
                _call(model, batch, device)
            except TypeError as e:
                err = _batch_error("calibrate", model, batch, e)
                if err is None:
                    raise
                raise err from e
    return model


def _minmax_observers(model):
    return [m for m in model.modules() if isinstance(m, (MinMaxObserver, PerChannelMinMaxObserver))]


def sync_observers(model: nn.Module, group=None) -> nn.Module:
    """All-reduces every observer's statistics over the ranks of ``group`` (default: the world)
    so that N ranks, each calibrated on its shard, hold the statistics of the union: min/max
    buffers by MIN / MAX (moving averages too, which makes them the envelope of the ranks'),
    NaN / Inf counts by SUM, histograms brought to the common range (the union of the ranks'
    ranges, each rebinned as the observer's own range growth does) and then SUMmed. Every rank
    must hold the same model; call it on all of them. Returns the model.

    >>> torchquant.calibrate(prepared, my_shard)
    >>> torchquant.sync_observers(prepared)
    """
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("sync_observers needs an initialized torch.distributed process group "
                           "(torch.distributed.init_process_group)")
    _name_observers(model)
    MIN, MAX, SUM = dist.ReduceOp.MIN, dist.ReduceOp.MAX, dist.ReduceOp.SUM
    for obs in model.modules():
        if isinstance(obs, PerChannelMinMaxObserver):
            # A rank that saw no data holds no channel yet: agree on the count first.
            channels = torch.tensor([obs.min_val.numel()], dtype=torch.int64, device=obs.min_val.device)
            dist.all_reduce(channels, MAX, group=group)
            c = int(channels)
            if c and obs.min_val.numel() == 0:
                obs._ensure_channels(c)
            elif obs.min_val.numel() != c:
                raise ValueError(f"{obs._describe()} has {obs.min_val.numel()} channels on this rank but {c} on "
                                 "another")
        if isinstance(obs, (MinMaxObserver, PerChannelMinMaxObserver)):
            dist.all_reduce(obs.min_val, MIN, group=group)
            dist.all_reduce(obs.max_val, MAX, group=group)
            dist.all_reduce(obs.nonfinite_count, SUM, group=group)
        elif isinstance(obs, HistogramObserver):
            lo, hi = obs.min_val.clone(), obs.max_val.clone()
            dist.all_reduce(lo, MIN, group=group)
            dist.all_reduce(hi, MAX, group=group)
            if bool(lo <= hi):
                obs.histogram.copy_(ops.histogram_rebin(obs.histogram, obs.min_val, obs.max_val, lo, hi,
                                                        obs.upsample_rate))
                obs.min_val.copy_(lo)
                obs.max_val.copy_(hi)
            dist.all_reduce(obs.histogram, SUM, group=group)
            dist.all_reduce(obs.nonfinite_count, SUM, group=group)
    return model

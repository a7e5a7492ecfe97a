"""MNIST end to end: train an fp32 MLP and a small CNN, quantize them, compare accuracy, size and speed.

    python -m torchquant.demo            # or: torchquant-mnist
    python -m torchquant.demo --help

The model is the MLP of the quantization lesson (784 -> 256 -> 256 -> 10, ReLU, QuantStub and
DeQuantStub at its ends). It is trained one epoch in fp32 with a fixed seed, then:

- static int8, per-channel weights: fuse Linear+ReLU, ``prepare``, calibrate on 512 training
  images, ``convert``;
- static int8, per-tensor weights: the same with one scale per weight tensor;
- dynamic int8: ``quantize_dynamic`` (weights int8 per output channel, activations quantized per row at run time);
- QAT: the per-tensor model fine-tuned a few hundred steps with fake quantization
  (``prepare_qat``), then converted.

One table compares test accuracy, the drop from fp32 in percentage points, the size of the
``torch.save``-d state dict and inference time per batch of 1024 (CPU, and CUDA when present).
Then a per-layer report (SQNR, max abs error) of the per-channel model against the float one.

Then the same for a small CNN (:class:`CNN`: two conv-bn-relu blocks with max pooling and a
Linear): trained one epoch in fp32, its BatchNorms folded into the convolutions by
``fuse_modules``, quantized static per channel and per tensor, and fine-tuned with QAT
(``ConvBnReLU2d`` modules that train BatchNorm with fake-quantized weights, then fold it at
``convert``). ``--no-cnn`` skips it.

The functions (``train``, ``evaluate``, ``quantize_static``, ``state_dict_size``,
``time_inference``, ...) are public so that notebooks and tests reuse them::

    >>> from torchquant import demo
    >>> data = demo.load_data()
    >>> model = demo.train(demo.MLP(), data.x_train, data.y_train, progress=False)
    >>> demo.evaluate(model, data.x_test, data.y_test, progress=False)
    97.6
"""
import argparse
import copy
import io
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

import torchquant as tq

from . import datasets
from .report import report as layer_report

__all__ = [
    "MLP", "CNN", "MNISTData", "load_data", "normalize", "train", "evaluate", "fuse", "quantize_static",
    "quantize_dynamic_model", "qat_finetune", "state_dict_size", "time_inference", "time_models", "Result",
    "format_table", "run", "main",
]

FUSE_PATTERN = [["fc1", "relu1"], ["fc2", "relu2"]]
CNN_FUSE_PATTERN = [["conv1", "bn1", "relu1"], ["conv2", "bn2", "relu2"]]
# torch.ao's backend names stand for observer choices here: "fbgemm" observes weights per
# output channel, "qnnpack" one scale per weight tensor. Both are symmetric int8 weights and
# affine uint8 activations.
QCONFIG_BACKEND = {"per_channel": "fbgemm", "per_tensor": "qnnpack"}


class MLP(nn.Module):
    """784 -> 256 -> 256 -> 10 with ReLU; QuantStub/DeQuantStub mark where int8 begins and ends.

    Takes flattened, normalized images ``[N, 784]`` (see :func:`normalize`), returns logits.

    >>> MLP()(torch.randn(2, 784)).shape
    torch.Size([2, 10])
    """

    fuse_pattern = FUSE_PATTERN

    def __init__(self, hidden: int = 256):
        super().__init__()
        self.quant = tq.QuantStub()
        self.fc1 = nn.Linear(28 * 28, hidden)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(hidden, 10)
        self.dequant = tq.DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        x = self.relu1(self.fc1(x))
        x = self.relu2(self.fc2(x))
        x = self.fc3(x)
        return self.dequant(x)


class CNN(nn.Module):
    """Two conv-bn-relu blocks (3x3, 16 then 32 channels, each followed by 2x2 max pooling) and
    a Linear: ``[N, 784]`` normalized images in (reshaped to ``[N, 1, 28, 28]``), logits out.

    The modules are the ones torchvision's quantizable models use (``nn.MaxPool2d``,
    ``nn.Flatten`` between quantized layers), so the int8 model shows the same flow: the pooling
    and flattening run on int8 activations unchanged.

    >>> CNN()(torch.randn(2, 784)).shape
    torch.Size([2, 10])
    """

    fuse_pattern = CNN_FUSE_PATTERN

    def __init__(self, c1: int = 16, c2: int = 32):
        super().__init__()
        self.quant = tq.QuantStub()
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c2 * 7 * 7, 10)
        self.dequant = tq.DeQuantStub()

    def forward(self, x):
        x = self.quant(x.reshape(-1, 1, 28, 28))
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        x = self.fc(self.flatten(x))
        return self.dequant(x)


@dataclass
class MNISTData:
    """Normalized, flattened float32 images ``[N, 784]`` and int64 labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, 28, 28]`` -> float32 ``[N, 784]``, ``(x/255 - mean) / std`` with MNIST's
    training statistics.

    >>> normalize(torch.zeros(1, 28, 28, dtype=torch.uint8))[0, 0]
    tensor(-0.4242)
    """
    x = images.reshape(images.shape[0], -1).to(torch.float32).div_(255.0)
    return x.sub_(datasets.MNIST_MEAN).div_(datasets.MNIST_STD)


def load_data(root: Optional[str] = None, train_subset: Optional[int] = None) -> MNISTData:
    """MNIST from :func:`torchquant.datasets.mnist`, normalized; ``train_subset`` keeps the first
    N training images (for quick runs)."""
    xi, yi = datasets.mnist("train", root)
    ti, ty = datasets.mnist("test", root)
    if train_subset is not None:
        if train_subset <= 0:
            raise ValueError(f"argument 'train_subset' must be > 0, got {train_subset}")
        xi, yi = xi[:train_subset], yi[:train_subset]
    return MNISTData(normalize(xi), yi, normalize(ti), ty)


def _bar(iterable, progress: bool, **kw):
    return tqdm(iterable, disable=not progress, leave=False, dynamic_ncols=True, **kw)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: float = 1.0, batch_size: int = 64,
          lr: float = 3e-3, seed: int = 0, device: str = "cpu", steps: Optional[int] = None,
          progress: bool = True, desc: str = "train fp32") -> nn.Module:
    """Adam + cross-entropy over shuffled mini-batches, in place; returns the model (on ``device``).

    The learning rate decays linearly from ``lr`` to 0 over the run: in one epoch that reaches
    about 97.5% where a constant 1e-3 stays near 96.5%. ``epochs`` may be fractional;
    ``steps``, when given, sets the number of optimizer steps instead (QAT fine-tuning uses it).
    The shuffle order depends only on ``seed``.

    >>> model = train(MLP(), data.x_train, data.y_train, epochs=1, progress=False)
    """
    if batch_size <= 0:
        raise ValueError(f"argument 'batch_size' must be > 0, got {batch_size}")
    if steps is None and not epochs >= 0:
        raise ValueError(f"argument 'epochs' must be >= 0, got {epochs}")
    if steps is not None and steps < 0:
        raise ValueError(f"argument 'steps' must be >= 0, got {steps}")
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    steps_per_epoch = (n + batch_size - 1) // batch_size
    total = int(round(epochs * steps_per_epoch)) if steps is None else steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - i / max(1, total))
    order = torch.empty(0, dtype=torch.int64)
    pos = 0
    bar = _bar(range(total), progress, desc=desc, unit="step")
    for _ in bar:
        if pos >= order.numel():
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        xb, yb = x[idx].to(device, non_blocking=True), y[idx].to(device, non_blocking=True)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024,
             device: Optional[str] = None, progress: bool = True, desc: str = "evaluate") -> float:
    """Top-1 accuracy in percent. Runs on ``device`` (default: where the model's parameters are,
    CPU for a converted model)."""
    model.eval()
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else "cpu"
    correct = 0
    for i in _bar(range(0, x.shape[0], batch_size), progress, desc=desc, unit="batch"):
        out = model(x[i:i + batch_size].to(device))
        correct += int((out.argmax(1).cpu() == y[i:i + batch_size]).sum())
    return 100.0 * correct / max(1, x.shape[0])


def fuse(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with its ``fuse_pattern`` fused (Linear+ReLU pairs of the
    MLP; conv-bn-relu of the CNN, BatchNorm folded): the same function, and the float twin that
    per-layer reports compare a converted model with."""
    return tq.fuse_modules(copy.deepcopy(model).cpu().eval(), _fuse_pattern(model))


def _fuse_pattern(model: nn.Module):
    return getattr(model, "fuse_pattern", FUSE_PATTERN)


def _calibration_batches(x: torch.Tensor, calib_size: int, batch_size: int = 64) -> List[torch.Tensor]:
    x = x[:calib_size]
    return [x[i:i + batch_size] for i in range(0, x.shape[0], batch_size)]


def quantize_static(model: nn.Module, x_calib: torch.Tensor, scheme: str = "per_channel",
                    calib_size: int = 512, progress: bool = True) -> nn.Module:
    """Post-training static int8: fuse, ``prepare`` with the scheme's qconfig, calibrate on the
    first ``calib_size`` rows of ``x_calib``, ``convert``. The input model is not modified.

    ``scheme``: ``"per_channel"`` (one scale per output row of each weight) or ``"per_tensor"``.

    >>> int8 = quantize_static(model, data.x_train, "per_channel", progress=False)
    """
    if scheme not in QCONFIG_BACKEND:
        raise ValueError(f"argument 'scheme' must be one of {sorted(QCONFIG_BACKEND)}, got {scheme!r}")
    if calib_size <= 0:
        raise ValueError(f"argument 'calib_size' must be > 0, got {calib_size}")
    m = fuse(model)
    m.qconfig = tq.get_default_qconfig(QCONFIG_BACKEND[scheme])
    tq.prepare(m, inplace=True)
    tq.calibrate(m, _calibration_batches(x_calib, calib_size), progress=progress)
    return tq.convert(m.eval(), inplace=False)


def quantize_dynamic_model(model: nn.Module) -> nn.Module:
    """Dynamic int8 of every ``nn.Linear`` (weights int8 per output channel, activations per row)."""
    return tq.quantize_dynamic(copy.deepcopy(model).cpu().eval(), {nn.Linear}, dtype=torch.qint8)


def qat_finetune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 300, batch_size: int = 64,
                 lr: float = 1e-4, seed: int = 1, scheme: str = "per_tensor", progress: bool = True) -> nn.Module:
    """Quantization-aware fine-tuning: fuse, ``prepare_qat`` (fake quantization of weights and
    activations in the forward pass, straight-through gradients), ``steps`` Adam steps on CPU,
    ``convert``. Returns the int8 model; the input model is not modified."""
    # fuse_modules_qat keeps BatchNorm as a module of ConvBnReLU2d (trained with the fake-quantized
    # weights, folded at convert); for the MLP it is the same fusion as fuse().
    m = tq.fuse_modules_qat(copy.deepcopy(model).cpu().train(), _fuse_pattern(model))
    m.qconfig = tq.get_default_qat_qconfig(QCONFIG_BACKEND[scheme])
    tq.prepare_qat(m, inplace=True)
    train(m, x, y, batch_size=batch_size, lr=lr, seed=seed, device="cpu", steps=steps,
          progress=progress, desc="train QAT")
    return tq.convert(m.eval(), inplace=False)


def state_dict_size(model: nn.Module) -> int:
    """Bytes that ``torch.save(model.state_dict(), f)`` writes.

    >>> state_dict_size(MLP())
    1080...
    """
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


@torch.no_grad()
def time_inference(model: nn.Module, x: torch.Tensor, device: str = "cpu", rounds: int = 7, per_round: int = 3,
                   warmup: int = 2) -> float:
    """Seconds per forward pass of ``model`` on the batch ``x`` on ``device``: the best of
    ``rounds`` rounds of ``per_round`` passes each, after ``warmup`` untimed passes.

    The best round, not the mean, because other processes only ever add time. CUDA is
    synchronized before each clock read. To compare models, :func:`time_models` interleaves them.

    >>> time_inference(model, data.x_test[:1024])
    0.0012
    """
    return time_models([model], x, device, rounds, per_round, warmup)[0]


@torch.no_grad()
def time_models(models: Sequence[nn.Module], x: torch.Tensor, device: str = "cpu", rounds: int = 7,
                per_round: int = 3, warmup: int = 2) -> List[float]:
    """:func:`time_inference` of several models, interleaved round by round so that a burst of
    load from elsewhere falls on all of them alike."""
    x = x.to(device)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    for m in models:
        m.eval()
        for _ in range(warmup):
            m(x)
    sync()
    best = [float("inf")] * len(models)
    for _ in range(rounds):
        for i, m in enumerate(models):
            t0 = time.perf_counter()
            for _ in range(per_round):
                m(x)
            sync()
            best[i] = min(best[i], (time.perf_counter() - t0) / per_round)
    return best


@dataclass
class Result:
    """One row of the demo's table. Times in seconds per batch; ``None`` where not measured."""

    name: str
    model: nn.Module
    accuracy: float
    size_bytes: int
    cpu_s: Optional[float] = None
    cuda_s: Optional[float] = None
    note: str = ""


def _to_cuda(model: nn.Module, x: torch.Tensor):
    """A copy of the model on CUDA, or None and the reason when it cannot run there."""
    try:
        m = copy.deepcopy(model).to("cuda")
        with torch.no_grad():
            m(x.to("cuda"))
        return m, ""
    except (RuntimeError, NotImplementedError) as e:  # a backend without CUDA kernels for this model
        return None, (str(e).splitlines() or [type(e).__name__])[0][:100]


def format_table(results: Sequence[Result], with_cuda: bool = False) -> str:
    """The demo's table; the first row is the fp32 baseline every ratio refers to."""
    base = results[0]
    head = ["model", "test acc %", "drop pp", "state dict KiB", "smaller", "CPU ms/batch", "CPU speedup"]
    if with_cuda:
        head += ["CUDA ms/batch", "CUDA speedup"]
    rows = []
    for r in results:
        row = [r.name, f"{r.accuracy:.2f}", f"{base.accuracy - r.accuracy:+.2f}" if r is not base else "-",
               f"{r.size_bytes / 1024:.1f}", f"{base.size_bytes / r.size_bytes:.2f}x"]
        for t, bt in ([(r.cpu_s, base.cpu_s)] + ([(r.cuda_s, base.cuda_s)] if with_cuda else [])):
            row += [f"{t * 1e3:.2f}", f"{bt / t:.2f}x"] if t and bt else ["n/a", "n/a"]
        rows.append(row)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = "  ".join(("{:<%d}" if i == 0 else "{:>%d}") % w for i, w in enumerate(widths))
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in rows]
    return "\n".join(lines)


class _InputError(ValueError):
    """Bad input data (a damaged MNIST file), an option that does not fit it, or a device this
    machine lacks: :func:`main` prints it as an error, with no traceback."""


def _resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise _InputError(f"--device {name}: CUDA is not available on this machine")
    index = torch.device(name).index
    if name.startswith("cuda") and index is not None and index >= torch.cuda.device_count():
        raise _InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return name


def _check_trains(flag: str, epochs: float, n: int, batch_size: int) -> None:
    # (a fraction of an epoch that rounds to no optimizer step would leave the model untrained)
    if int(round(epochs * ((n + batch_size - 1) // batch_size))) < 1:
        raise _InputError(f"{flag} {epochs:g} rounds to 0 training steps on {n} images at --batch-size {batch_size}")


def _time_results(results: List[Result], bench_x: torch.Tensor, with_cuda: bool, progress: bool,
                  print_fn: Callable[[str], None]) -> List[str]:
    """Fills ``cpu_s`` (and ``cuda_s``) of every result; returns notes on models that cannot run
    on CUDA."""
    notes = []
    if progress:
        print_fn("timing inference ...")
    for r, t in zip(results, time_models([r.model for r in results], bench_x, "cpu")):
        r.cpu_s = t
    if with_cuda:
        on_cuda = []
        for r in results:
            m, why = _to_cuda(r.model, bench_x)
            if m is None:
                notes.append(f"{r.name}: no CUDA timing ({why})")
            else:
                on_cuda.append((r, m))
        for (r, _), t in zip(on_cuda, time_models([m for _, m in on_cuda], bench_x, "cuda", rounds=10, per_round=10)):
            r.cuda_s = t
    return notes


def _print_table(title: str, results: List[Result], notes: List[str], with_cuda: bool, batch: int,
                 print_fn: Callable[[str], None]) -> str:
    table = format_table(results, with_cuda)
    print_fn("")
    print_fn(f"{title}: accuracy on the 10,000 test images; size of torch.save(state_dict); "
             f"inference time per batch of {batch}; ratios vs fp32.")
    print_fn(table)
    for n in notes:
        print_fn(f"  note: {n}")
    return table


def run(args: argparse.Namespace, print_fn: Callable[[str], None] = print) -> Dict[str, object]:
    """The whole demo for parsed arguments; returns the results, the report and the table (and,
    unless ``--no-cnn``, the CNN's under ``cnn_results`` / ``cnn_report`` / ``cnn_table``)."""
    t_start = time.perf_counter()
    progress = not args.no_progress
    device = _resolve_device(args.device)
    torch.manual_seed(args.seed)

    try:
        data = load_data(args.data_root, args.train_subset)
    except ValueError as e:  # a damaged or wrong MNIST file (read_idx and mnist name it), a bad subset size
        raise _InputError(str(e)) from e
    _check_trains("--epochs", args.epochs, data.x_train.shape[0], args.batch_size)
    if not args.no_cnn:
        _check_trains("--cnn-epochs", args.cnn_epochs, data.x_train.shape[0], args.batch_size)
    print_fn(f"MNIST: {data.x_train.shape[0]} training, {data.x_test.shape[0]} test images; "
             f"training on {device}, {torch.get_num_threads()} CPU threads")

    fp32 = train(MLP(), data.x_train, data.y_train, epochs=args.epochs, batch_size=args.batch_size,
                 lr=args.lr, seed=args.seed, device=device, progress=progress).cpu()

    def acc(model, name):
        return evaluate(model, data.x_test, data.y_test, device="cpu", progress=progress, desc=f"evaluate {name}")

    per_channel = quantize_static(fp32, data.x_train, "per_channel", args.calib_size, progress)
    per_tensor = quantize_static(fp32, data.x_train, "per_tensor", args.calib_size, progress)
    dynamic = quantize_dynamic_model(fp32)
    qat = qat_finetune(fp32, data.x_train, data.y_train, steps=args.qat_steps, batch_size=args.batch_size,
                       seed=args.seed + 1, progress=progress) if args.qat_steps > 0 else None

    models = [("fp32", fp32), ("int8 static per-channel", per_channel), ("int8 static per-tensor", per_tensor),
              ("int8 dynamic", dynamic)]
    if qat is not None:
        models.append((f"int8 QAT per-tensor ({args.qat_steps} steps)", qat))
    results = [Result(name, m, acc(m, name), state_dict_size(m)) for name, m in models]

    bench_x = data.x_test[:args.bench_batch]
    with_cuda = torch.cuda.is_available() and not args.no_cuda_timing
    notes = _time_results(results, bench_x, with_cuda, progress, print_fn)
    table = _print_table("MLP", results, notes, with_cuda, bench_x.shape[0], print_fn)

    float_twin = fuse(fp32)
    rep = layer_report(float_twin, per_channel, data.x_test[:args.bench_batch])
    print_fn("")
    print_fn(f"Per-layer error of int8 static per-channel vs fp32 ({bench_x.shape[0]} test images):")
    print_fn(rep.table())
    out = {"results": results, "report": rep, "table": table, "data": data}

    if not args.no_cnn:
        torch.manual_seed(args.seed)
        cnn = train(CNN(), data.x_train, data.y_train, epochs=args.cnn_epochs, batch_size=args.batch_size,
                    lr=args.lr, seed=args.seed, device=device, progress=progress, desc="train CNN fp32").cpu()
        cnn_models = [("fp32", cnn),
                      ("int8 static per-channel", quantize_static(cnn, data.x_train, "per_channel",
                                                                  args.calib_size, progress)),
                      ("int8 static per-tensor", quantize_static(cnn, data.x_train, "per_tensor",
                                                                 args.calib_size, progress))]
        if args.qat_steps > 0:
            cnn_models.append((f"int8 QAT per-channel ({args.qat_steps} steps)",
                               qat_finetune(cnn, data.x_train, data.y_train, steps=args.qat_steps,
                                            batch_size=args.batch_size, seed=args.seed + 1,
                                            scheme="per_channel", progress=progress)))
        cnn_results = [Result(name, m, acc(m, f"CNN {name}"), state_dict_size(m)) for name, m in cnn_models]
        cnn_notes = _time_results(cnn_results, bench_x, with_cuda, progress, print_fn)
        out["cnn_table"] = _print_table("CNN", cnn_results, cnn_notes, with_cuda, bench_x.shape[0], print_fn)
        out["cnn_results"] = cnn_results
        out["cnn_report"] = layer_report(fuse(cnn), cnn_models[1][1], data.x_test[:args.bench_batch])
        print_fn("")
        print_fn(f"Per-layer error of the CNN's int8 static per-channel vs fp32 ({bench_x.shape[0]} test images):")
        print_fn(out["cnn_report"].table())

    if args.plot_dir:
        os.makedirs(args.plot_dir, exist_ok=True)
        path = os.path.join(args.plot_dir, "per_layer_sqnr.png")
        fig = rep.plot(path, title="int8 per-channel vs fp32")
        summary = os.path.join(args.plot_dir, "accuracy_size.png")
        _plot_summary(results, summary)
        import matplotlib.pyplot as plt

        plt.close(fig)
        print_fn(f"plots written to {path} and {summary}")

    print_fn(f"total {time.perf_counter() - t_start:.1f} s")
    return out


def _plot_summary(results: Sequence[Result], path: str) -> None:
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
    names = [r.name.replace("int8 ", "").replace(" (", "\n(") for r in results]
    a1.bar(names, [r.accuracy for r in results], color="tab:green")
    a1.set_ylim(min(r.accuracy for r in results) - 1.0, 100.0)
    a1.set_ylabel("test accuracy %")
    a2.bar(names, [r.size_bytes / 1024 for r in results], color="tab:orange")
    a2.set_ylabel("state dict KiB")
    for a in (a1, a2):
        a.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {'> 0' if low == 1 else f'>= {low}'}, got {value}")
        return value

    return parse


def _seed(text: str) -> int:
    """A seed torch.manual_seed takes: an integer in [0, 2**64) (a larger one overflowed there)."""
    value = _int_at_least(0)(text)
    if value >= 1 << 64:
        raise argparse.ArgumentTypeError(f"must be below 2**64, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _device(text: str) -> str:
    if text == "auto":
        return text
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"must be cpu, cuda, cuda:N or auto, got {text!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda, cuda:N or auto, got {text!r}")
    return text


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m torchquant.demo",
        description="Train an MLP and a small CNN on MNIST in fp32, quantize them to int8 (static per-channel, "
                    "static per-tensor, dynamic, QAT) and compare test accuracy, state-dict size and inference "
                    "time. Needs MNIST on disk: run `python scripts/get_mnist.py` once.",
    )
    p.add_argument("--epochs", type=_positive_float, default=1.0,
                   help="fp32 training epochs, > 0, fractions allowed (default 1)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of weight init and shuffling (default 0)")
    p.add_argument("--device", type=_device, default="cpu",
                   help="where to train: cpu, cuda or auto (default cpu; int8 accuracy is measured on CPU, "
                        "and CUDA inference is timed whenever a GPU is present)")
    p.add_argument("--data-root", default=None,
                   help="dir with the MNIST IDX files (default: $TORCHQUANT_DATA or ~/.cache/torchquant/mnist)")
    p.add_argument("--plot-dir", default=None,
                   help="write plots (per-layer SQNR, accuracy and size) as PNG files into this dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="training batch size (default 64)")
    p.add_argument("--lr", type=_positive_float, default=3e-3,
                   help="initial Adam learning rate of fp32 training, decayed linearly to 0 (default 3e-3)")
    p.add_argument("--calib-size", type=_positive_int, default=512,
                   help="training images used to calibrate the static models (default 512)")
    p.add_argument("--qat-steps", type=_non_negative_int, default=300,
                   help="QAT fine-tuning steps; 0 skips QAT (default 300)")
    p.add_argument("--train-subset", type=_positive_int, default=None,
                   help="train on the first N training images only (quick runs)")
    p.add_argument("--bench-batch", type=_positive_int, default=1024,
                   help="batch size for timing and the report (default 1024)")
    p.add_argument("--no-cuda-timing", action="store_true", help="do not time on CUDA even when a GPU is present")
    p.add_argument("--no-cnn", action="store_true", help="skip the CNN part (MLP only)")
    p.add_argument("--cnn-epochs", type=_positive_float, default=1.0,
                   help="fp32 training epochs of the CNN, > 0 (default 1)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point (``torchquant-mnist`` / ``python -m torchquant.demo``)."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (datasets.MNISTNotFoundError, _InputError) as e:  # no MNIST, a damaged one, no such device
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

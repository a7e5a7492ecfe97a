"""MNIST from its raw IDX files, with no download at run time.

``python scripts/get_mnist.py`` fills the default data dir once (``$TORCHQUANT_DATA`` or
``~/.cache/torchquant/mnist``); ``mnist()`` reads from there, or from any dir holding the four
IDX files under their usual names (``train-images-idx3-ubyte`` or ``train-images.idx3-ubyte``,
gzipped or not), including torchvision's ``<root>/MNIST/raw`` layout.

Example::

    >>> images, labels = torchquant.datasets.mnist("test")
    >>> images.shape, images.dtype, labels.shape, labels.dtype
    (torch.Size([10000, 28, 28]), torch.uint8, torch.Size([10000]), torch.int64)
"""
import gzip
import os
import struct
from typing import List, Optional, Tuple

import torch

__all__ = ["mnist", "default_root", "read_idx", "MNISTNotFoundError", "MNIST_MEAN", "MNIST_STD"]

# Mean and standard deviation of the training images' pixels scaled to [0, 1].
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

_PREFIX = {"train": "train", "test": "t10k"}
_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
_FETCH_HINT = (
    "Fetch it once with `python scripts/get_mnist.py` from the torchquant source tree "
    "(it writes to $TORCHQUANT_DATA or ~/.cache/torchquant/mnist), or point to a dir that "
    "holds train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
    "t10k-labels-idx1-ubyte (optionally .gz; torchvision's <root>/MNIST/raw works too): "
    "pass it as root= (the demo: --data-root DIR) or set $TORCHQUANT_DATA to it."
)


class MNISTNotFoundError(FileNotFoundError):
    """No copy of MNIST was found; the message says where it looked and how to get one."""


def default_root() -> str:
    """The dir ``scripts/get_mnist.py`` fills: ``$TORCHQUANT_DATA`` or ``~/.cache/torchquant/mnist``.

    >>> torchquant.datasets.default_root()
    '/home/me/.cache/torchquant/mnist'
    """
    env = os.environ.get("TORCHQUANT_DATA")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    return os.path.join(os.path.expanduser("~"), ".cache", "torchquant", "mnist")


def _candidate_dirs(root: str) -> List[str]:
    return [root, os.path.join(root, "MNIST", "raw"), os.path.join(root, "raw")]


def _candidate_names(prefix: str, kind: str, ndim: int) -> List[str]:
    stems = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
    return [s + ext for s in stems for ext in ("", ".gz")]


def _find(root: str, prefix: str, kind: str, ndim: int) -> Optional[str]:
    for d in _candidate_dirs(root):
        for name in _candidate_names(prefix, kind, ndim):
            path = os.path.join(d, name)
            if os.path.isfile(path):
                return path
    return None


def read_idx(path: str) -> torch.Tensor:
    """Reads an unsigned-byte IDX file (optionally gzipped) into a uint8 tensor of its shape.

    Raises ValueError naming the file when the header or the size is wrong.

    >>> torchquant.datasets.read_idx("t10k-labels-idx1-ubyte").shape
    torch.Size([10000])
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip raises these for a damaged stream
        raise ValueError(f"MNIST file {path} cannot be read: {e}") from e
    if len(raw) < 4:
        raise ValueError(f"MNIST file {path} is {len(raw)} bytes long, too short for an IDX header")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
        magic = struct.unpack(">I", raw[:4])[0]
        raise ValueError(
            f"MNIST file {path} has magic number 0x{magic:08x}; expected 0x{_LABELS_MAGIC:08x} (labels) "
            f"or 0x{_IMAGES_MAGIC:08x} (images). Is it an IDX file, or a corrupt one?"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"MNIST file {path} is {len(raw)} bytes long, shorter than its {header}-byte header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    n = 1
    for d in shape:
        n *= d
    if len(raw) != header + n:
        raise ValueError(
            f"MNIST file {path}: its header says shape {tuple(shape)} ({header + n} bytes) but the file "
            f"has {len(raw)} bytes (truncated or corrupt)"
        )
    # bytearray: torch.frombuffer wants a writable buffer to share without a warning.
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape) if n else \
        torch.empty(shape, dtype=torch.uint8)


def mnist(split: str = "train", root: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The real MNIST: ``(images uint8 [N, 28, 28], labels int64 [N])``, N = 60,000 (train) or
    10,000 (test).

    ``root`` is a dir holding the IDX files (or torchvision's ``<root>/MNIST/raw``); by default
    the one ``scripts/get_mnist.py`` filled (see :func:`default_root`). Nothing is downloaded:
    with no copy found, :class:`MNISTNotFoundError` says how to get one.

    >>> x, y = torchquant.datasets.mnist("train")
    >>> x.shape, y[:5]
    (torch.Size([60000, 28, 28]), tensor([5, 0, 4, 1, 9]))
    """
    if split not in _PREFIX:
        raise ValueError(f"argument 'split' must be 'train' or 'test', got {split!r}")
    root = default_root() if root is None else os.path.abspath(os.path.expanduser(os.fspath(root)))
    prefix = _PREFIX[split]
    images_path = _find(root, prefix, "images", 3)
    labels_path = _find(root, prefix, "labels", 1)
    missing = [n for n, p in ((f"{prefix}-images-idx3-ubyte", images_path),
                              (f"{prefix}-labels-idx1-ubyte", labels_path)) if p is None]
    if missing:
        looked = ", ".join(_candidate_dirs(root))
        raise MNISTNotFoundError(
            f"MNIST {split} split not found: no {' or '.join(missing)} (plain or .gz) in {looked}. {_FETCH_HINT}"
        )
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dim() != 3 or tuple(images.shape[1:]) != (28, 28):
        raise ValueError(f"MNIST file {images_path} holds shape {tuple(images.shape)}, expected [N, 28, 28] images")
    if labels.dim() != 1:
        raise ValueError(f"MNIST file {labels_path} holds shape {tuple(labels.shape)}, expected [N] labels")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"MNIST {split}: {images.shape[0]} images in {images_path} but {labels.shape[0]} labels in {labels_path}"
        )
    if labels.numel() and int(labels.max()) > 9:
        raise ValueError(f"MNIST file {labels_path} has a label {int(labels.max())}, expected 0..9")
    return images, labels.to(torch.int64)

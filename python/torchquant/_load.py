"""Loads the compiled op library. A failure raises ImportError that says why: the ops are
never silently missing."""
import glob
import os

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))


def _library_path():
    candidates = sorted(glob.glob(os.path.join(_HERE, "_C*.so")) + glob.glob(os.path.join(_HERE, "_C*.pyd")))
    if not candidates:
        raise ImportError(
            "torchquant: the compiled op library (torchquant/_C*.so) was not found next to "
            f"{_HERE}. Build it against the installed torch with "
            "`pip install --no-build-isolation -e .` from the source tree."
        )
    return candidates[0]


def load():
    path = _library_path()
    try:
        torch.ops.load_library(path)
    except (OSError, RuntimeError) as e:
        try:
            from ._build_config import TORCH_VERSION as built_with
        except ImportError:
            built_with = "unknown"
        hint = ""
        if built_with != torch.__version__:
            hint = (
                f" It was built against torch {built_with} but torch {torch.__version__} is "
                "installed: rebuild with `pip install --no-build-isolation -e .`."
            )
        raise ImportError(f"torchquant: loading the op library {path} failed: {e}.{hint}") from e
    return path


LIBRARY_PATH = load()

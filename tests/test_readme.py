"""The README's Python examples run as printed (a README that drifts from the API fails here)."""
import pathlib
import re

import pytest
import torch

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_examples_run():
    blocks = _python_blocks()
    assert blocks, "the README has no python example"
    if any("torchvision" in code for code in blocks):
        pytest.importorskip("torchvision")
    scopes = []
    for code in blocks:
        scope = {}
        exec(compile(code, str(README), "exec"), scope)  # noqa: S102 - the project's own README
        scopes.append(scope)
    # The ten-line example ends with an int8 model's float output.
    scope = next(s for s in scopes if "int8_model" in s)
    y = scope["y"]
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32 and y.shape == (16, 10)
    assert type(scope["int8_model"][1]).__module__.startswith("torchquant.")

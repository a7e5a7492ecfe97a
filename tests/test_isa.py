"""CPU kernel variant selection: TORCHQUANT_CPU_ISA, set_cpu_isa, force_cpu_isa."""
import os
import subprocess
import sys

import pytest

import torchquant
from torchquant.isa import ISAS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROBE = r"""
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import torch, torchquant
    x = torch.randn(100)
    q = torchquant.quantize_per_tensor(x, 0.1, 0, torch.qint8)  # ops work
    isa_after_import = torchquant.cpu_isa()
mine = [str(w.message) for w in caught if "TORCHQUANT_CPU_ISA" in str(w.message)]
print(len(mine))
print(mine[0] if mine else "")
print(isa_after_import)
for isa in ("scalar", "auto"):  # "auto": the detected variant
    torchquant.set_cpu_isa(isa)
    print(torchquant.cpu_isa())
"""


def _run(value):
    env = dict(os.environ, TORCHQUANT_CPU_ISA=value, PYTHONPATH=os.path.join(ROOT, "python"))
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


@pytest.mark.parametrize("value", ["sse9", "AVX2 "])
def test_bad_environment_value_warns_once_at_import_and_falls_back(value):
    # TORCHQUANT_CPU_ISA=sse9 made every op fail with "unknown CPU ISA 'sse9' (argument 'isa')",
    # and set_cpu_isa could not recover (the failed static initialization was retried).
    count, message, after_import, forced, detected = _run(value)
    assert count == "1"
    assert f"TORCHQUANT_CPU_ISA={value!r}" in message
    assert "auto, scalar, avx2, avxvnni, avx512vnni" in message
    assert after_import == detected
    assert forced == "scalar"


def test_good_environment_value_is_used_without_warning():
    count, message, after_import, forced, _ = _run("scalar")
    assert (count, message, after_import, forced) == ("0", "", "scalar", "scalar")


def test_set_cpu_isa_rejects_unknown_names_and_keeps_the_current_one():
    before = torchquant.cpu_isa()
    with pytest.raises(RuntimeError, match=r"unknown CPU ISA 'sse9' \(argument 'isa'\)"):
        torchquant.set_cpu_isa("sse9")
    assert torchquant.cpu_isa() == before
    for isa in ISAS:
        try:
            with torchquant.force_cpu_isa(isa):
                assert torchquant.cpu_isa() == isa
        except RuntimeError as e:
            assert "does not support it" in str(e)
        assert torchquant.cpu_isa() == before


def test_force_cpu_isa_in_overlapping_threads_restores_the_variant():
    import threading
    import time
    start = torchquant.cpu_isa()
    seen, errors = [], []

    def worker(isa, delay):
        try:
            with torchquant.force_cpu_isa(isa):
                time.sleep(delay)
                seen.append((isa, torchquant.cpu_isa()))
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=worker, args=("scalar", 0.05)), threading.Thread(target=worker, args=(start, 0.01))]
    for t in threads:
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join()
    assert not errors and all(a == b for a, b in seen) and torchquant.cpu_isa() == start


def test_set_cpu_isa_inside_a_compiled_function_runs_at_each_call():
    # torch.compile traced the op once, at compile time, and dropped it from the graph as dead
    # code: later calls of the compiled function never set the variant. It runs at call time now,
    # and fullgraph=True refuses it.
    import torch

    start = torchquant.cpu_isa()

    def g(x):
        torchquant.set_cpu_isa("scalar")
        return x + 1

    try:
        torch._dynamo.reset()
        c = torch.compile(g, backend="aot_eager")
        c(torch.ones(3))
        torchquant.set_cpu_isa(start)
        c(torch.ones(3))
        assert torchquant.cpu_isa() == "scalar"
        torchquant.set_cpu_isa(start)
        torch._dynamo.reset()
        with pytest.raises(Exception):
            torch.compile(g, backend="aot_eager", fullgraph=True)(torch.ones(3))
    finally:
        torchquant.set_cpu_isa(start)
        torch._dynamo.reset()

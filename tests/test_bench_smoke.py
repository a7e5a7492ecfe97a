"""Benchmarks' code paths at tiny sizes on the CPU (the GPU model benchmark with --smoke, so that
the script a GPU run depends on does not rot between runs; the plain-model benchmark at 32x32).
Figures from them are meaningless and not checked."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("transformers")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_gpu_models_smoke_runs_every_section():
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_gpu_models.py"), "--smoke"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = r.stdout
    for what in ("LSTM 2x32", "EmbeddingBag 8-bit", "EmbeddingBag 4-bit", "decode, eager step, int4"):
        assert what in out, out
    assert "FAILED" not in out and "not measured" not in out, out


def test_bench_plain_models_smoke():
    pytest.importorskip("torchvision")
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_plain_models.py"), "resnet18",
                        "--size", "32", "--rounds", "1", "--per-round", "1"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "resnet18" in r.stdout.splitlines()[-1], r.stdout


def test_bench_decode_smoke():
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_decode.py"), "--smoke"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for what in ("fp32", "bf16", "torch.ao int8 dynamic", "torchquant int8 dynamic", "torchquant int4 g128 rtn"):
        assert any(line.startswith(what + " ") for line in r.stdout.splitlines()), r.stdout


def test_bench_weight_only_memory_smoke():
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_weight_only_memory.py"), "--layers", "1",
                        "--hidden", "64", "--vocab", "128", "--methods", "gptq"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = [line.split() for line in r.stdout.splitlines() if line.startswith("gptq ")]
    assert [row[1] for row in rows] == ["copy", "in"] and all(int(row[-2]) >= 0 for row in rows), r.stdout

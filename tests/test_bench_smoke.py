"""Benchmarks' code paths at tiny sizes on the CPU (the GPU benchmarks with --smoke, so that the
scripts a GPU run depends on do not rot between runs; the plain-model benchmark at 32x32), and
what the benchmarks hand to the code they time. Figures from them are meaningless and not
checked."""
import importlib
import os
import subprocess
import sys
import warnings

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


@pytest.fixture
def bench(monkeypatch):
    """Imports a benchmark module in this process; the warning filters it sets at import and the
    quantized engine its code picks do not leak into the other tests."""
    monkeypatch.syspath_prepend(BENCH)
    engine = torch.backends.quantized.engine

    def load(name):
        with warnings.catch_warnings():
            return importlib.import_module(name)

    yield load
    torch.backends.quantized.engine = engine


def test_timeit_synchronizes_cuda_only_when_asked(bench, monkeypatch):
    common = bench("common")
    syncs = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: syncs.append(1))
    common.timeit(lambda: None, warmup=1, repeat=3, min_time=0)
    assert syncs == []  # CPU work: a GPU in the machine must add nothing to the timed calls
    common.timeit(lambda: None, warmup=1, repeat=3, min_time=0, cuda=True)
    assert len(syncs) >= 3


def test_bench_conv_transpose_gives_torch_ao_channels_last_input(bench, monkeypatch):
    mod = bench("bench_conv_transpose")
    seen = []
    forward = torch.ao.nn.quantized.ConvTranspose2d.forward

    def spy(self, x, *args, **kwargs):
        seen.append(x.is_contiguous(memory_format=torch.channels_last))
        return forward(self, x, *args, **kwargs)

    def call_each_once(fns, rounds, target_ms):
        return {name: (fn(), 1.0)[1] for name, fn in fns.items()}

    monkeypatch.setattr(torch.ao.nn.quantized.ConvTranspose2d, "forward", spy)
    monkeypatch.setattr(mod, "interleaved_us", call_each_once)
    t = mod.bench_shape("tiny", 8, 4, 4, 4, 2, 1, 1, 1, 1.0)
    assert set(t) == {"tq", "ao", "fp32"}
    assert seen == [True]  # as torchquant's: no layout conversion inside torch.ao's timed call


def test_torchvision_sqnr_reports_a_failing_anchor(bench, monkeypatch, capsys):
    mod = bench("torchvision_sqnr")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5)).eval()
    monkeypatch.setattr(mod, "build", lambda name, size, seed=0: model)

    def fails(x):  # as torch.ao's converted ShuffleNetV2 does at small inputs
        raise RuntimeError("required rank 4 tensor to use channels_last format")

    def quantize_with(flow, m, calib, reduce_range=False):
        return fails if flow == "ao" else (lambda x: m(x) * 1.01)

    monkeypatch.setattr(mod, "quantize_with", quantize_with)
    s_tq, s_ao, _ = mod.compare("m", 4, 1, 1)
    assert isinstance(s_tq, float) and s_ao == "RuntimeError"
    monkeypatch.setattr(sys, "argv", ["torchvision_sqnr.py", "a", "b", "--size", "4", "--batch", "1", "--batches", "1",
                                      "--threads", str(torch.get_num_threads())])
    mod.main()
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["a"], ["b"])]
    assert [row[2:4] for row in rows] == [["fails:", "RuntimeError"]] * 2, out
    assert "worst difference" not in out, out  # no model where both ran


def test_bench_linear_int_mm_anchor_matches_linear_int8(bench):
    mod = bench("bench_linear")
    gen = torch.Generator().manual_seed(0)
    M, K, N = 32, 64, 24
    w_f = torch.randn(N, K, generator=gen) * 0.05
    b_f = torch.randn(N, generator=gen) * 0.1
    w_scale = (w_f.abs().amax(1) / 127).float()
    w_q = torch.clamp(torch.round(w_f / w_scale[:, None]), -128, 127).to(torch.int8)
    x_u8 = torch.randint(0, 256, (M, K), generator=gen, dtype=torch.uint8)
    wp, cs = torch.ops.torchquant.pack_weight(w_q)
    ours = torch.ops.torchquant.linear_int8(x_u8, torch.tensor([0.02]), torch.tensor([128], dtype=torch.int32), wp,
                                            cs, w_scale, b_f, torch.tensor([0.05]),
                                            torch.tensor([64], dtype=torch.int32), False, torch.uint8)
    # the activations shifted by their zero point 128: no correction left for the anchor to make
    x_s8 = (x_u8.to(torch.int16) - 128).to(torch.int8)
    anchor = mod.int_mm_requant(x_s8, w_q.t().contiguous(), 0.02, w_scale, b_f, 0.05, 64)
    assert (anchor.int() - ours.int()).abs().max() <= 1


def test_bench_gpu_smoke_runs_every_section_on_the_cpu():
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, os.path.join(BENCH, "bench_gpu.py"), "--smoke"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = r.stdout
    assert out.startswith("device: cpu (smoke)"), out
    for what in ("int8_mm 64x256x256 host loop", "linear_dynamic 3x100x99", "linear_int4 bf16 16x1024x256",
                 "quantize_rowwise", "HistogramObserver 65536, reset", "conv 3->8 7x7/2", "resnet50 32^2 b1 int8"):
        assert what in out, out


def test_bench_gpu_models_smoke_runs_every_section():
    pytest.importorskip("transformers")
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_gpu_models.py"), "--smoke"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = r.stdout
    for what in ("LSTM 2x32", "EmbeddingBag 8-bit", "EmbeddingBag 4-bit", "decode, eager step, int4 g32 rtn"):
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
    pytest.importorskip("transformers")
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_decode.py"), "--smoke"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for what in ("fp32", "bf16", "torch.ao int8 dynamic", "torchquant int8 dynamic", "torchquant int4 g32 rtn"):
        assert any(line.startswith(what + " ") for line in r.stdout.splitlines()), r.stdout


def test_bench_weight_only_memory_smoke():
    pytest.importorskip("transformers")
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_weight_only_memory.py"), "--layers", "1",
                        "--hidden", "64", "--vocab", "128", "--methods", "gptq"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = [line.split() for line in r.stdout.splitlines() if line.startswith("gptq ")]
    assert [row[1] for row in rows] == ["copy", "in"] and all(int(row[-2]) >= 0 for row in rows), r.stdout

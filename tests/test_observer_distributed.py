"""sync_observers: two ranks on gloo, each calibrated on half the data, end with the qparams
one process gets from all of it."""
import os
import socket
import sys
import warnings
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

WORLD = 2


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _observers():
    from torchquant import observer as tqo
    return torch.nn.ModuleDict({
        "minmax": tqo.MinMaxObserver(),
        "sym": tqo.MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric),
        "ma": tqo.MovingAverageMinMaxObserver(averaging_constant=1.0),
        "perch": tqo.PerChannelMinMaxObserver(ch_axis=1),
        "perch_idle": tqo.PerChannelMinMaxObserver(ch_axis=1),  # sees data on rank 0 only
        "hist": tqo.HistogramObserver(bins=256),
        "hist_grow": tqo.HistogramObserver(bins=256),
    })


def _shards(rank):
    gen = torch.Generator().manual_seed(100 + rank)
    batches = [torch.randn(32, 6, generator=gen) * (1 + rank) + rank for _ in range(3)]
    batches[1][0, 0] = float("nan")
    # Same extremes on every rank: the shared histograms never rebin, so their sum is exact.
    fixed = [torch.cat([b.clamp(-4, 4), torch.tensor([[-5.0] * 6, [6.0] * 6])]) for b in batches]
    return batches, fixed


def _feed(obs, batches, fixed, rank):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for b, f in zip(batches, fixed):
            obs["minmax"](b), obs["sym"](b), obs["perch"](b), obs["hist_grow"](b), obs["hist"](f)
            if rank == 0:
                obs["perch_idle"](b)
        obs["ma"](batches[0] * (rank + 1))


def _worker(rank, port, out_dir):
    sys.path[:0] = [os.path.join(os.path.dirname(__file__), "..", "python")]
    import torchquant
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    try:
        obs = _observers()
        batches, fixed = _shards(rank)
        _feed(obs, batches, fixed, rank)
        torchquant.sync_observers(obs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = {name: [t.clone() for t in o.calculate_qparams()] for name, o in obs.items()}
        result["state"] = {k: v.clone() for k, v in obs.state_dict().items()}
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_sync_observers_two_ranks_equal_the_union(tmp_path):
    ctx = mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=False)
    while not ctx.join(timeout=120):
        pass
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    # One process, all the data.
    union = _observers()
    for rank in range(WORLD):
        _feed(union, *_shards(rank), rank)

    for r in results:  # every rank holds the same statistics
        for k, v in r["state"].items():
            assert torch.equal(v.nan_to_num(), results[0]["state"][k].nan_to_num()), k
    got = results[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("minmax", "sym", "perch", "perch_idle", "hist"):
            want = union[name].calculate_qparams()
            assert torch.equal(got[name][0], want[0]) and torch.equal(got[name][1], want[1]), name
        # Moving averages merge as the envelope of the ranks' (MIN / MAX).
        assert torch.equal(got["state"]["ma.max_val"], torch.maximum(*(
            (_shards(r)[0][0] * (r + 1)).max() for r in range(WORLD))))
        # Different ranges: the histograms are rebinned to the common range, then summed.
        want = union["hist_grow"].calculate_qparams()
        assert torch.allclose(got["hist_grow"][0], want[0], rtol=0.01)
        assert got["state"]["hist_grow.histogram"].sum() == union["hist_grow"].histogram.sum()
    assert int(got["state"]["minmax.nonfinite_count"][0]) == WORLD  # the NaNs of both ranks


def test_sync_observers_needs_a_process_group():
    import torchquant
    with pytest.raises(RuntimeError, match="init_process_group"):
        torchquant.sync_observers(_observers())

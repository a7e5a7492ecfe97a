"""A converted model in shared memory (``model.share_memory()``, as torch.multiprocessing's
Hogwild-style use): a process that runs it sees an update made by another process with
``load_state_dict``, as it does for a float model, and never a mix of the old and new layouts."""
import os
import sys
import warnings

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn


def _models(seed):
    sys.path[:0] = [os.path.join(os.path.dirname(__file__), "..", "python")]
    import torchquant as tq

    torch.manual_seed(seed)
    x = torch.randn(6, 3, 8, 8)
    static = nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 16),
                           tq.DeQuantStub()).eval()
    static.qconfig = tq.get_default_qconfig("x86")
    prepared = tq.prepare(static)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared(x * (1 + seed))  # other output qparams for the other seed
        return nn.ModuleDict({
            "static": tq.convert(prepared),
            "dynamic": tq.quantize_dynamic(nn.Sequential(nn.Linear(192, 32)), {nn.Linear}),
            "int4": tq.quantize_weight_only(nn.Sequential(nn.Linear(192, 32)), group_size=32, progress=False),
        })


def _outputs(models, x):
    with torch.no_grad():
        return {k: m(x if k == "static" else x.flatten(1)) for k, m in models.items()}


def _worker(models, x, go, results):
    sys.path[:0] = [os.path.join(os.path.dirname(__file__), "..", "python")]
    import torchquant  # noqa: F401  (the ops)

    torch.set_num_threads(1)  # (a forked child's OpenMP pool is the parent's, which fork does not copy)

    # (as bytes: a tensor sent back would be shared through a file descriptor of this process)
    results.put({k: v.numpy().tobytes() for k, v in _outputs(models, x).items()})
    go.wait(120)
    results.put({k: v.numpy().tobytes() for k, v in _outputs(models, x).items()})


@pytest.mark.parametrize("assign", [False, True])
@pytest.mark.parametrize("start", ["spawn", "fork"])
def test_a_process_running_a_shared_model_sees_its_update(start, assign):
    # Before: load_state_dict copied the new weights and scales into the shared buffers in place
    # but put its rebuilt kernel layout (and fresh output qparams) in new tensors of its own
    # process: the other process ran the old layout with the new scales (outputs of neither
    # model, up to 2.8 off for the dynamic and int4 layers). With fork, the int8 layouts were not
    # even in shared memory (share_memory() rebuilt them as private tensors). assign=True puts
    # new tensors in place of the shared ones: the other process stays on the old model whole.
    if start not in mp.get_all_start_methods():
        pytest.skip(f"no {start} start method here")
    old, new = _models(0), _models(1)
    x = torch.randn(6, 3, 8, 8)
    want_old, want_new = _outputs(old, x), _outputs(new, x)
    old.share_memory()
    assert all(t.is_shared() for t in old.buffers() if t.numel())
    ctx = mp.get_context(start)
    go, results = ctx.Event(), ctx.Queue()
    p = ctx.Process(target=_worker, args=(old, x, go, results))
    p.start()
    try:
        before = results.get(timeout=180)
        old.load_state_dict(new.state_dict(), assign=assign)
        mine = _outputs(old, x)
        go.set()
        after = results.get(timeout=180)
    finally:
        go.set()
        p.join(60)
    before, after = ({k: torch.frombuffer(bytearray(v), dtype=torch.float32).reshape(want_old[k].shape)
                      for k, v in r.items()} for r in (before, after))
    for k in want_old:
        assert not torch.equal(want_old[k], want_new[k]), k
        assert torch.equal(before[k], want_old[k]), k
        assert torch.equal(mine[k], want_new[k]), k
        assert torch.equal(after[k], want_old[k] if assign else want_new[k]), k
    assert p.exitcode == 0

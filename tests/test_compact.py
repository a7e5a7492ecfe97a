"""Converted layers hold one copy of their weights: the packed layout, with the portable weight
(the state dict's) rebuilt from it where needed (python/torchquant/nn/_compact.py)."""
import copy
import io
import pickle
import warnings

import pytest
import torch
from torch import nn

import torchquant as tq
from torchquant.nn._compact import (compact, expand, is_compact, portable_qweight, unpack_by_probes, unpack_conv_cpu,
                                    unpack_int4_cpu, unpack_linear_cpu)
from torchquant.int4.format import pack_int4, unpack_int4

ops = torch.ops.torchquant


def _static(model, x, qconfig="x86"):
    model.eval()
    model.qconfig = tq.get_default_qconfig(qconfig)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = tq.prepare(model)
        p(x)
        return tq.convert(p)


def _weighted(model):
    return [m for m in model.modules() if hasattr(m, "_unpack_qweight")]


def _resident_bytes(model):
    """Bytes of storage the model's buffers hold (each storage once; none on the meta device)."""
    seen, total = set(), 0
    for b in model.buffers():
        if b.device.type == "meta":
            continue
        s = b.untyped_storage()
        if s.data_ptr() not in seen:
            seen.add(s.data_ptr())
            total += s.nbytes()
    return total


def _models(seed=0):
    torch.manual_seed(seed)
    x2, x3, x4, x5 = torch.randn(5, 67), torch.randn(2, 6, 23), torch.randn(2, 3, 11, 9), torch.randn(1, 4, 5, 6, 7)
    return {
        "dynamic": (lambda: tq.quantize_dynamic(nn.Sequential(nn.Linear(67, 45), nn.ReLU(), nn.Linear(45, 33)),
                                                {nn.Linear}), x2),
        "static linear": (lambda: _static(nn.Sequential(tq.QuantStub(), nn.Linear(67, 17), nn.ReLU(),
                                                        nn.Linear(17, 130), tq.DeQuantStub()), x2), x2),
        "conv1d": (lambda: _static(nn.Sequential(tq.QuantStub(), nn.Conv1d(6, 10, 3, padding=1), nn.ReLU(),
                                                 nn.Conv1d(10, 10, 5, groups=10), tq.DeQuantStub()), x3), x3),
        "conv2d": (lambda: _static(nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 20, 3), nn.ReLU6(),
                                                 nn.Conv2d(20, 20, 3, groups=20, padding=1),
                                                 nn.Conv2d(20, 12, (1, 3), groups=4, stride=2), tq.DeQuantStub()),
                                   x4), x4),
        "conv3d": (lambda: _static(nn.Sequential(tq.QuantStub(), nn.Conv3d(4, 7, 3, padding=1), tq.DeQuantStub()),
                                   x5), x5),
        "conv transpose": (lambda: _static(nn.Sequential(tq.QuantStub(), nn.ConvTranspose2d(3, 6, 3, stride=2),
                                                         nn.ConvTranspose2d(6, 4, 2, groups=2), tq.DeQuantStub()),
                                           x4), x4),
        "lstm": (lambda: tq.quantize_dynamic(nn.LSTM(23, 19, 2, bidirectional=True), {nn.LSTM}),
                 torch.randn(4, 2, 23)),
        "int4": (lambda: tq.quantize_weight_only(nn.Sequential(nn.Linear(200, 37), nn.Linear(37, 19)), group_size=32,
                                                 progress=False), torch.randn(5, 200)),
        "int8 weight-only": (lambda: tq.quantize_weight_only(nn.Sequential(nn.Linear(70, 21)), bits=8,
                                                             progress=False), torch.randn(3, 70)),
    }


KINDS = list(_models())


def _out(y):
    y = y[0] if isinstance(y, tuple) else y
    return y.dequantize() if isinstance(y, tq.QTensor) else y


def _expanded_twin(model):
    twin = copy.deepcopy(model)
    for m in _weighted(twin):
        expand(m)
        m._repack()
    return twin


@pytest.mark.parametrize("kind", KINDS)
def test_flows_keep_one_copy_of_the_weights_and_change_no_result(kind):
    build, x = _models()[kind]
    model = build()
    mods = _weighted(model)
    assert mods and all(is_compact(m) for m in mods)
    twin = _expanded_twin(model)
    assert not any(is_compact(m) for m in _weighted(twin))
    assert torch.equal(_out(model(x)), _out(twin(x)))
    sd, want = model.state_dict(), twin.state_dict()
    assert list(sd) == list(want)
    for k in want:
        assert sd[k].dtype == want[k].dtype and torch.equal(sd[k], want[k]), k
    # in memory: the packed layout once, not beside the portable weight as well
    portable = sum(m._buffers["qweight"].numel() * m._buffers["qweight"].element_size() for m in _weighted(twin))
    assert _resident_bytes(twin) - _resident_bytes(model) == portable


@pytest.mark.parametrize("kind", KINDS)
def test_moves_casts_copies_and_loads_keep_results_and_compactness(kind):
    build, x = _models()[kind]
    model = build()
    want = _out(model(x))
    sd = model.state_dict()

    def check(m, where):
        assert all(is_compact(w) for w in _weighted(m)), where
        assert torch.equal(_out(m(x)), want), where

    check(copy.deepcopy(model), "deepcopy")
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    check(loaded, "torch.save of the module")
    check(pickle.loads(pickle.dumps(model)), "pickle")
    # the pickle holds the portable weight (a packed layout is per machine)
    state = model.__getstate__() if hasattr(model, "_unpack_qweight") else _weighted(model)[0].__getstate__()
    assert "_tq_compact" not in state
    model.to("cpu")
    check(model, ".to('cpu')")
    if kind not in ("dynamic", "lstm", "int4", "int8 weight-only"):
        return
    model.double()  # (float layers in float64; the int8 / int4 ones as they are)
    assert all(is_compact(w) for w in _weighted(model))
    model.float()
    check(model, ".double().float()")
    other = _models(1)[kind][0]()
    other.load_state_dict(sd)
    check(other, "load_state_dict")
    other = _models(1)[kind][0]()
    other.load_state_dict(sd, assign=True)
    check(other, "load_state_dict(assign=True)")
    torch.save(sd, buf := io.BytesIO())
    buf.seek(0)
    other = _models(1)[kind][0]()
    other.load_state_dict(torch.load(buf, weights_only=True))
    check(other, "torch.load(weights_only=True)")


@pytest.mark.parametrize("kind", KINDS)
def test_functional_call_with_another_state_and_back(kind):
    build, x = _models()[kind]
    m1, m2 = build(), _models(1)[kind][0]()
    own, theirs = _out(m1(x)), _out(m2(x))
    assert not torch.equal(own, theirs)
    assert torch.equal(_out(torch.func.functional_call(m1, m2.state_dict(), (x,))), theirs)
    assert torch.equal(_out(m1(x)), own)  # its own weights again
    assert all(is_compact(m) for m in _weighted(m1))


@pytest.mark.parametrize("kind", ["dynamic", "static linear", "conv2d", "int4"])
def test_reading_qweight_gives_the_weight_and_in_place_changes_take_effect(kind):
    build, x = _models()[kind]
    model = build()
    twin = _expanded_twin(model)
    m, t = _weighted(model)[0], _weighted(twin)[0]
    w = m.qweight
    assert not is_compact(m)
    assert torch.equal(w, t.qweight)
    # the module is an ordinary one again: a change in place reaches the kernels
    with torch.no_grad():
        w.copy_(w.flip(0))
        t.qweight.copy_(t.qweight.flip(0))
    assert torch.equal(_out(model(x)), _out(twin(x)))
    assert compact(m)
    assert torch.equal(_out(model(x)), _out(twin(x)))
    assert torch.equal(model.state_dict()[_name_of(model, m) + "qweight"], t.qweight)


def _name_of(model, module):
    return next(n for n, m in model.named_modules() if m is module) + "."


def test_placeholder_holds_no_values_and_a_write_into_it_is_an_error():
    build, x = _models()["dynamic"]
    model = build()
    ph = model[0]._buffers["qweight"]
    assert ph.device.type == "meta" and ph.dtype == torch.int8 and tuple(ph.shape) == (45, 67)
    with pytest.raises((RuntimeError, NotImplementedError)):  # (no values to copy out)
        torch.zeros(45, 67, dtype=torch.int8).copy_(ph)
    ph.add_(1)  # (a write on the meta device does nothing but bump its version)
    with pytest.raises(RuntimeError, match="wrote in place into its qweight buffer"):
        model(x)


def test_conv_qparams_changed_in_place_repack_from_the_right_weight():
    # the conv layout's sources include its output qparams (the ReLU6 bound): a change to them in
    # place rebuilds the layout, which a compact module rebuilds from its own weight
    build, x = _models()["conv2d"]
    model = build()
    twin = _expanded_twin(model)
    for q in (model, twin):
        with torch.no_grad():
            q[1].scale.mul_(1.5)
    assert torch.equal(_out(model(x)), _out(twin(x)))
    assert is_compact(model[1])
    tq.repack(model)
    assert is_compact(model[1]) and torch.equal(_out(model(x)), _out(twin(x)))


def test_shared_memory_modules_keep_both():
    model = _models()["dynamic"][0]()
    model.share_memory()
    assert not any(is_compact(m) for m in _weighted(model))
    x = torch.randn(3, 67)
    assert torch.equal(model(x), _expanded_twin(model)(x))


def test_compile_of_a_compact_model():
    build, x = _models()["dynamic"]
    model = build()
    want = model(x)
    got = torch.compile(model, backend="eager", fullgraph=True)(x)
    assert torch.equal(got, want)
    assert all(is_compact(m) for m in _weighted(model))


def test_int4_weight_view_reads_leave_it_compact():
    build, x = _models()["int4"]
    model = build()
    m = model[0]
    assert m.weight.device.type == "cpu" and tuple(m.weight.shape) == (37, 200)
    deq = m.dequantized_weight()
    assert is_compact(m)
    assert torch.equal(deq, _expanded_twin(model)[0].dequantized_weight())


@pytest.mark.parametrize("kind", ["dynamic", "static linear", "conv2d"])
def test_int8_weight_reads_of_shape_and_device_leave_it_compact_and_its_codes_are_the_weight(kind):
    build, x = _models()[kind]
    model = build()
    twin = _expanded_twin(model)
    m, t = _weighted(model)[0], _weighted(twin)[0]
    w = m.weight
    want = t.qweight
    assert isinstance(w, tq.QTensor) and not isinstance(w, torch.Tensor)
    assert torch.overrides.has_torch_function((w,))  # (fused paths that read .weight stay off the layer)
    assert w.shape == want.shape and w.size() == want.size() and w.size(1) == want.size(1)
    assert w.dim() == w.ndim == want.dim() and w.numel() == want.numel() and len(w) == len(want)
    assert w.device == want.device and not w.is_cuda and w.get_device() == -1
    assert w.dtype == (torch.float32 if kind == "dynamic" else torch.qint8)
    assert is_compact(m)
    # the codes, when used, are the weight's (and the module is an ordinary one again)
    assert torch.equal(w.int_repr(), want)
    assert torch.equal(w.dequantize(), t.weight.dequantize())
    assert w().dtype == torch.qint8 and torch.equal(w().data, want)
    assert not is_compact(m)
    assert compact(m)
    # a change in place through .weight's codes reaches the kernels
    with torch.no_grad():
        m.weight.data.copy_(want.flip(0))
        t.qweight.copy_(want.flip(0))
    assert torch.equal(_out(model(x)), _out(twin(x)))


def test_transformer_layers_and_t5_that_read_weights_in_forward_stay_compact():
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2,
                                enable_nested_tensor=True).eval()
    x = torch.randn(2, 7, 32)
    q = tq.quantize_dynamic(enc, {nn.Linear})
    twin = _expanded_twin(q)
    mask = torch.tensor([[False] * 7, [False] * 5 + [True] * 2])
    with torch.no_grad():  # (the fused path's checks read every layer's .weight)
        for kw in ({}, {"src_key_padding_mask": mask}):
            assert torch.equal(q(x, **kw), twin(x, **kw))
    assert all(is_compact(m) for m in _weighted(q))
    transformers = pytest.importorskip("transformers")
    cfg = transformers.T5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)
    t5 = tq.quantize_dynamic(transformers.T5Model(cfg).eval(), {nn.Linear})
    ids = torch.randint(0, 50, (1, 6))
    with torch.no_grad():  # (its feed-forward reads wo.weight on every call)
        got = t5(input_ids=ids, decoder_input_ids=ids).last_hidden_state
    assert all(is_compact(m) for m in _weighted(t5))
    with torch.no_grad():
        assert torch.equal(got, _expanded_twin(t5)(input_ids=ids, decoder_input_ids=ids).last_hidden_state)


@pytest.mark.parametrize("kind", ["dynamic", "static linear", "conv2d", "int4"])
def test_everything_works_under_inference_mode(kind):
    build, x = _models()[kind]
    with torch.inference_mode():
        model = build()  # (converted under inference mode: compact all the same)
    assert all(is_compact(m) for m in _weighted(model))
    want = _out(_expanded_twin(model)(x))
    with torch.inference_mode():
        assert torch.equal(_out(model(x)), want)
        sd = model.state_dict()
        twin = copy.deepcopy(model)
        buf = io.BytesIO()
        torch.save(model, buf)
        moved = copy.deepcopy(model).to(torch.float64)
        twin.load_state_dict(sd)
        w = _weighted(twin)[0].weight
        w.dequantize() if kind != "int4" else _weighted(twin)[0].dequantized_weight()
    buf.seek(0)
    for other in (twin, torch.load(buf, weights_only=False)):
        assert torch.equal(_out(other(x)), want)
    assert moved is not None


@pytest.mark.parametrize("kind", ["dynamic", "static linear", "conv2d", "int4"])
def test_writes_into_state_dict_values_reach_the_module(kind):
    # torch's state_dict() holds references to the module's tensors: copying one model's weights
    # into another's through its values (EMA, target networks) changes that model
    build, x = _models()[kind]
    torch.manual_seed(0)
    dst = build()
    src = _models(seed=1)[kind][0]()
    assert not torch.equal(_out(dst(x)), _out(src(x)))
    with torch.no_grad():
        for d, v in zip(dst.state_dict().values(), src.state_dict().values()):
            d.copy_(v)  # (the state dict is dropped right after)
    assert torch.equal(_out(dst(x)), _out(src(x)))
    # a state dict kept, written after a call, and read again
    dst = build()
    sd = dst.state_dict()
    dst(x)
    twin = _expanded_twin(dst)
    assert "_tq_handed" not in _weighted(twin)[0].__dict__  # (a copy holds no record of dst's state dicts)
    name = _name_of(dst, _weighted(dst)[0]) + "qweight"
    with torch.no_grad():
        sd[name].copy_(src.state_dict()[name])
    assert torch.equal(dst.state_dict()[name], src.state_dict()[name])
    with torch.no_grad():
        _weighted(twin)[0].qweight.copy_(src.state_dict()[name])
    assert torch.equal(_out(dst(x)), _out(twin(x)))
    # an unwritten state dict, dropped: the module stays compact and lets it go
    dst = build()
    ref = _out(dst(x))
    dst.state_dict()
    assert torch.equal(_out(dst(x)), ref)
    assert all(is_compact(m) and "_tq_handed" not in m.__dict__ for m in _weighted(dst))


def test_another_models_placeholder_put_in_place_is_read_back():
    build, x = _models()["dynamic"]
    torch.manual_seed(0)
    dst, src = build(), _models(seed=1)["dynamic"][0]()
    want = src(x)
    got = torch.func.functional_call(build(), src.state_dict(keep_vars=True), (x,))
    assert torch.equal(got, want)
    dst.load_state_dict(src.state_dict(keep_vars=True), assign=True)
    assert torch.equal(dst(x), want)


@pytest.mark.parametrize("kind", ["dynamic", "static linear", "conv2d", "int4"])
def test_a_meta_skeleton_loaded_is_compact_again(kind):
    build, x = _models()[kind]
    model = build()
    sd, want = model.state_dict(), _out(model(x))
    sk = copy.deepcopy(model).to("meta").to_empty(device="cpu")
    sk.load_state_dict(sd)
    assert all(is_compact(m) for m in _weighted(sk))
    assert torch.equal(_out(sk(x)), want)
    sk = copy.deepcopy(model).to("meta")
    sk.load_state_dict(sd, assign=True)
    assert torch.equal(_out(sk(x)), want)
    assert all(is_compact(m) for m in _weighted(sk))


def test_a_layer_under_two_names_loads_strict_when_the_checkpoint_saved_it_once():
    # safetensors' save_model keeps one name of shared tensors and its load_model expects the
    # other names reported missing by a strict=False load
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(16, 16)
            self.b = self.a

        def forward(self, x):
            return self.b(self.a(x))

    torch.manual_seed(0)
    q = tq.quantize_weight_only(Twice(), bits=4, group_size=16, progress=False)
    torch.manual_seed(1)
    other = tq.quantize_weight_only(Twice(), bits=4, group_size=16, progress=False)
    sd = {k: v for k, v in q.state_dict().items() if k.startswith("a.")}
    missing, unexpected = other.load_state_dict(sd, strict=False)
    assert sorted(missing) == sorted("b." + k[2:] for k in sd) and not unexpected
    x = torch.randn(2, 16)
    assert torch.equal(other(x), q(x))


def test_a_write_landing_while_the_layout_is_built_is_not_taken_as_packed(monkeypatch):
    # another thread's write into the weight that completes after the repack read it: the next
    # call must rebuild the layout (the versions recorded are those before the repack read)
    import torchquant.nn.quantized as Q
    model = _models()["dynamic"][0]()
    x = torch.randn(3, 67)
    w = model[0].qweight
    pack = Q.ops.pack_weight

    def racy(qw):
        out = pack(qw)
        w.zero_()  # (the other thread's write lands here)
        return out

    with torch.no_grad():
        w.fill_(1)
    monkeypatch.setattr(Q.ops, "pack_weight", racy)
    model(x)
    monkeypatch.setattr(Q.ops, "pack_weight", pack)
    twin = _expanded_twin(model)
    assert torch.equal(model(x), twin(x))


@pytest.mark.parametrize("between", ["repack", "load", "cast"])
def test_state_dicts_before_and_after_a_compaction_share_the_weight(between):
    model = _models()["dynamic"][0]()
    x = torch.randn(3, 67)
    sd1 = model.state_dict()
    if between == "repack":
        tq.repack(model)
    elif between == "load":
        model.load_state_dict(model.state_dict())
    else:
        model.to(torch.float64).to(torch.float32)
    sd2 = model.state_dict()
    with torch.no_grad():
        sd2["0.qweight"].fill_(3)
        sd1["0.qweight"].fill_(1)  # (the last write wins, as in an uncompacted module's one buffer)
    model(x)
    assert torch.equal(model.state_dict()["0.qweight"], torch.ones(45, 67, dtype=torch.int8))


def test_a_held_state_dict_survives_a_functional_call_with_other_weights():
    model, other = _models()["dynamic"][0](), _models(seed=1)["dynamic"][0]()
    x = torch.randn(3, 67)
    sd = model.state_dict()
    torch.func.functional_call(model, other.state_dict(), (x,))
    with torch.no_grad():
        sd["0.qweight"].zero_()
    assert torch.equal(model.state_dict()["0.qweight"], torch.zeros(45, 67, dtype=torch.int8))
    twin = _expanded_twin(model)
    assert torch.equal(model(x), twin(x))


def test_a_held_weight_reads_the_module_as_it_is_now():
    model, other = _models()["dynamic"][0](), _models(seed=1)["dynamic"][0]()
    for assign in (False, True):
        w = model[0].weight
        model.load_state_dict(other.state_dict(), assign=assign)
        assert torch.equal(w.int_repr(), other[0].weight.int_repr())
        assert torch.equal(w.dequantize(), other[0].weight.dequantize())  # (codes and scales of one moment)
    w = model[0].weight
    model.to(torch.bfloat16)
    assert w.dtype == torch.bfloat16


# ---------------------------------------------------------------- the inverses, on every ISA's packing
@pytest.mark.parametrize("shape", [(1, 1), (16, 4), (17, 5), (45, 67), (130, 17), (3, 130), (64, 1030)])
def test_linear_cpu_unpack_inverts_pack_weight(isa, shape):
    torch.manual_seed(shape[0] * 1000 + shape[1])
    w = torch.randint(-128, 128, shape, dtype=torch.int8)
    w[0, 0], w[-1, -1] = -128, 127
    packed, _ = ops.pack_weight(w)
    assert torch.equal(unpack_linear_cpu(packed, *shape), w)
    # a non-contiguous weight packs to the same layout
    wt = w.t().contiguous().t()
    assert torch.equal(unpack_linear_cpu(ops.pack_weight(wt)[0], *shape), w)


@pytest.mark.parametrize("shape,groups", [((8, 3, 3, 3), 1), ((20, 1, 3, 3), 20), ((12, 5, 1, 3), 4),
                                          ((10, 1, 5), 10), ((7, 4, 3, 3, 3), 1), ((16, 2, 1, 1), 8),
                                          ((33, 11, 3), 1), ((8, 3, 7, 7), 1), ((6, 3, 3, 1), 1), ((4, 1, 1, 3), 1),
                                          ((64, 16, 1, 3, 3), 2), ((5, 2, 2), 1)])
def test_conv_unpack_inverts_pack_conv_weight(isa, shape, groups):
    torch.manual_seed(len(shape) * 100 + groups)
    w = torch.randint(-128, 128, shape, dtype=torch.int8)
    w.reshape(-1)[0] = -128
    packed = ops.pack_conv_weight(w, groups)[0]
    assert torch.equal(unpack_by_probes(lambda t: ops.pack_conv_weight(t, groups)[0], packed, shape), w)
    assert torch.equal(unpack_conv_cpu(packed, shape, groups), w)


@pytest.mark.parametrize("shape,groups", [((3, 6, 3, 3), 1), ((6, 2, 2, 2), 2), ((4, 5, 3), 1), ((2, 3, 2, 2, 2), 1)])
def test_conv_transpose_unpack_inverts_its_packing(isa, shape, groups):
    torch.manual_seed(7)
    w = torch.randint(-128, 128, shape, dtype=torch.int8)
    packed = ops.pack_conv_transpose_weight(w, groups)[0]
    assert torch.equal(unpack_by_probes(lambda t: ops.pack_conv_transpose_weight(t, groups)[0], packed, shape), w)


def test_unpack_by_probes_refuses_a_layout_that_loses_weights():
    w = torch.randint(-128, 128, (4, 6), dtype=torch.int8)
    with pytest.raises(ValueError, match="each weight once"):
        unpack_by_probes(lambda t: t[:, :5].reshape(-1), w[:, :5].reshape(-1), (4, 6))
    with pytest.raises(ValueError, match="each weight once"):  # two slots for one weight
        unpack_by_probes(lambda t: torch.cat([t.reshape(-1), t[0]]), torch.cat([w.reshape(-1), w[0]]), (4, 6))


@pytest.mark.parametrize("N,K,group_size", [(1, 8, 8), (37, 200, 32), (16, 128, 128), (19, 37, 32), (40, 300, 64)])
def test_int4_cpu_unpack_inverts_int4_pack_weight(N, K, group_size):
    torch.manual_seed(N + K)
    q = torch.randint(0, 16, (N, K), dtype=torch.uint8)
    G = -(-K // group_size)
    scale = torch.rand(N, G) + 0.1
    zp = torch.randint(0, 16, (N, G), dtype=torch.uint8)
    packed = ops.int4_pack_weight(pack_int4(q), scale, zp, K, group_size)[0]
    assert torch.equal(unpack_int4_cpu(packed, N, K, group_size), q)
    assert torch.equal(unpack_int4(pack_int4(unpack_int4_cpu(packed, N, K, group_size)), K), q)


def test_a_weight_the_layout_cannot_give_back_is_kept():
    # an int4 byte whose unused high nibble (odd K) is set is not what the layout gives back:
    # the module keeps its portable weight rather than a placeholder for another one
    m = tq.quantize_weight_only(nn.Sequential(nn.Linear(37, 8)), group_size=32, progress=False)[0]
    expand(m)
    with torch.no_grad():
        m.qweight[:, -1] |= 0xF0
    m._repack()
    assert not compact(m)
    assert portable_qweight(m) is None and m._buffers["qweight"][:, -1].ge(0xF0).all()


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["dynamic", "static linear", "conv2d", "conv transpose", "lstm", "int4"])
def test_cuda_models_are_compact_and_run_as_the_expanded_twin(kind):
    # .cuda() rebuilds the portable weight, moves it, repacks on the GPU and compacts with the
    # GPU layout's inverse (the CUDA Linear's and int4's by formula, the convolutions' by probes)
    build, x = _models()[kind]
    model = build().cuda()
    x = x.cuda()
    assert all(is_compact(m) for m in _weighted(model)), kind
    twin = _expanded_twin(model)
    assert torch.equal(_out(model(x)), _out(twin(x)))
    sd, want = model.state_dict(), twin.state_dict()
    for k in want:
        assert torch.equal(sd[k], want[k]), k
    back, twin = model.cpu(), twin.cpu()
    assert all(is_compact(m) for m in _weighted(back))
    assert torch.equal(_out(back(x.cpu())), _out(twin(x.cpu())))


@pytest.mark.parametrize("kind", ["dynamic", "static linear", "int4"])
def test_another_models_placeholder_reads_back_its_weight(kind):
    # functional_call with another model's named_buffers() puts that model's placeholder in this
    # one; a copy made during the call runs and saves that model's weights, not a meta tensor
    build, x = _models()[kind]
    m1, m2 = build(), _models(1)[kind][0]()
    want_sd = _expanded_twin(m2).state_dict()
    copies = []
    h = m1.register_forward_pre_hook(lambda mod, a: copies.append(copy.deepcopy(mod)))
    st = {**dict(m2.named_parameters()), **dict(m2.named_buffers())}
    got = _out(torch.func.functional_call(m1, st, (x,)))
    h.remove()
    assert torch.equal(got, _out(m2(x)))
    c = copies[0]
    assert torch.equal(_out(c(x)), _out(m2(x)))
    sd = c.state_dict()
    for k in want_sd:
        assert sd[k].device.type != "meta" and torch.equal(sd[k], want_sd[k]), k


def test_state_dict_never_saves_a_placeholder_while_another_thread_reads_the_weight():
    import threading

    build, _ = _models()["dynamic"]
    for _ in range(200):
        model = build()
        seen = []
        t = threading.Thread(target=lambda: model[0].qweight)
        t.start()
        seen.append(model.state_dict()["0.qweight"].device.type)
        t.join()
        assert seen == ["cpu"]


def test_a_module_under_two_names_saves_one_tensor():
    build, _ = _models()["dynamic"]
    model = build()
    shared = nn.Sequential(model[0], nn.ReLU(), model[0])
    sd = shared.state_dict()
    assert sd["0.qweight"].device.type == "cpu"
    assert sd["0.qweight"].untyped_storage().data_ptr() == sd["2.qweight"].untyped_storage().data_ptr()


def test_backward_through_a_compact_layer_leaves_it_compact():
    for kind in ("dynamic", "int4", "int8 weight-only"):
        build, x = _models()[kind]
        model = build()
        twin = _expanded_twin(model)
        xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
        model(xs[0]).sum().backward()
        twin(xs[1]).sum().backward()
        assert torch.equal(xs[0].grad, xs[1].grad), kind
        assert all(is_compact(m) for m in _weighted(model)), kind


def test_fullgraph_compile_reading_the_weights_dtype_and_after_another_state():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(32, 16)

        def forward(self, x):
            return self.fc(x.to(self.fc.weight.dtype))

    torch.manual_seed(0)
    q = tq.quantize_dynamic(M(), {nn.Linear})
    x = torch.randn(3, 32)
    want = _expanded_twin(q)(x)
    torch._dynamo.reset()
    with torch.no_grad():
        assert torch.equal(torch.compile(q, backend="eager", fullgraph=True)(x), want)
    assert is_compact(q.fc)
    # a repack inside the trace (after another model's state ran): the weights given, then its own
    m1, m2 = _models(0)["int4"][0](), _models(1)["int4"][0]()
    xi = torch.randn(4, 200)
    theirs, own = m2(xi), m1(xi)
    assert torch.equal(torch.func.functional_call(m1, m2.state_dict(), (xi,)), theirs)
    torch._dynamo.reset()
    assert torch.equal(torch.compile(m1, backend="eager", fullgraph=True)(xi), own)


def _run_in_spawned_child(models, inputs, path, go):
    torch.set_num_threads(1)
    with torch.no_grad():
        torch.save({k: _out(m(inputs[k])) for k, m in models.items()}, path + ".1")
        go.wait(120)
        torch.save({k: _out(m(inputs[k])) for k, m in models.items()}, path + ".2")


def test_a_compact_model_passed_to_a_spawned_process_arrives_whole(tmp_path):
    # ctx.Process(args=(model,)), torch.multiprocessing.spawn(fn, args=(model,)), a DataLoader
    # worker's dataset: torch's pickler moves each tensor to shared memory and passes the child its
    # file descriptor, which the start method hands over once the whole process object is pickled.
    # The weights compact layers rebuilt for the pickle were freed before that: the start failed
    # ("bad value(s) in fds_to_keep") or the child did ("unable to resize file").
    import torch.multiprocessing as mp

    kinds = ["static linear", "conv2d", "dynamic", "int4"]
    models, inputs, new = {}, {}, {}
    for k in kinds:
        build, inputs[k] = _models()[k]
        models[k], new[k] = build(), _models(1)[k][0]()
    want = {k: _out(m(inputs[k])) for k, m in models.items()}
    want_new = {k: _out(m(inputs[k])) for k, m in new.items()}
    ctx = mp.get_context("spawn")
    go, path = ctx.Event(), str(tmp_path / "out")
    p = ctx.Process(target=_run_in_spawned_child, args=(models, inputs, path, go))
    p.start()
    try:
        for _ in range(1800):
            if not p.is_alive() or (tmp_path / "out.1").exists():
                break
            p.join(0.1)
        # this process's layers stay compact and run as before
        for k, m in models.items():
            assert all(is_compact(w) for w in _weighted(m)), k
            assert torch.equal(_out(m(inputs[k])), want[k]), k
        # the child shares the tensors, as a float model's: a load here reaches it whole (its
        # layout is the one shared, which the load refills, not the old one with the new scales)
        for k, m in models.items():
            m.load_state_dict(new[k].state_dict())
    finally:
        go.set()
        p.join(180)
    assert p.exitcode == 0
    before, after = torch.load(path + ".1"), torch.load(path + ".2")
    for k in kinds:
        assert not torch.equal(want[k], want_new[k]), k
        assert torch.equal(before[k], want[k]), k
        assert torch.equal(after[k], want_new[k]), k


@pytest.mark.parametrize("kind", ["dynamic", "static linear", "conv2d", "int4"])
def test_copies_made_under_inference_mode_are_compact(kind):
    # (the copy's weight, an inference tensor, is replaced by a normal one when its layout is
    # recorded: compact compared the layout's source with the weight read before that)
    build, x = _models()[kind]
    model = build()
    want = _out(model(x))
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    with torch.inference_mode():
        copies = {"deepcopy": copy.deepcopy(model), "pickle": pickle.loads(pickle.dumps(model)),
                  "torch.load": torch.load(buf, weights_only=False)}
    for how, c in copies.items():
        assert all(is_compact(m) for m in _weighted(c)), how
        assert _resident_bytes(c) == _resident_bytes(model), how
        assert torch.equal(_out(c(x)), want), how


@pytest.mark.parametrize("kind", ["dynamic", "static linear", "conv2d", "int4"])
def test_loading_a_models_own_state_dict_keeps_it_compact(kind):
    # the load copies into the weight state_dict() handed out (the one the load puts back in the
    # buffer): its own write, not a user's, which the next call took for one (keeping both copies)
    build, x = _models()[kind]
    model = build()
    want = _out(model(x))
    size = _resident_bytes(model)
    sd = model.state_dict()
    model.load_state_dict(sd)
    assert torch.equal(_out(model(x)), want)
    assert all(is_compact(m) for m in _weighted(model)) and _resident_bytes(model) == size
    # a write of the user's into that state dict's weight afterwards still reaches the module
    src = _models(seed=1)[kind][0]()
    name = _name_of(model, _weighted(model)[0]) + "qweight"
    twin = _expanded_twin(model)
    with torch.no_grad():
        sd[name].copy_(src.state_dict()[name])
        _weighted(twin)[0].qweight.copy_(src.state_dict()[name])
    assert torch.equal(model.state_dict()[name], src.state_dict()[name])
    assert torch.equal(_out(model(x)), _out(twin(x)))

"""A converted model pickled whole (torch.save(model)) and loaded onto another device gets the
kernel layouts of that device; a parametrized buffer of a quantized module is refused by name."""
import io
import warnings

import pytest
import torch
from torch import nn
import torch.nn.utils.parametrize as P

import torchquant as tq
from torchquant._ops import conv_packed_weight_shape, conv_transpose_packed_weight_shape, packed_weight_shape
from torchquant.nn import quantized as tqq
from torchquant.nn.quantized_int4 import LinearWeightOnlyInt4
from torchquant.nn._state_dict import note_packed


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _static(float_model, x):
    float_model.eval()
    float_model.qconfig = tq.get_default_qconfig("x86")
    p = _quiet(tq.prepare, float_model)
    p(x)
    return _quiet(tq.convert, p)


def _models():
    """name -> (model, input): one of each module family with a packed layout."""
    torch.manual_seed(0)
    x2 = torch.randn(3, 12)
    x4 = torch.randn(2, 4, 6, 6)
    return {
        "linear": (_static(nn.Sequential(tq.QuantStub(), nn.Linear(12, 20), tq.DeQuantStub()), x2), x2),
        "dynamic": (tq.quantize_dynamic(nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 5))), x2),
        "conv": (_static(nn.Sequential(tq.QuantStub(), nn.Conv2d(4, 8, 3), tq.DeQuantStub()), x4), x4),
        "depthwise": (_static(nn.Sequential(tq.QuantStub(), nn.Conv2d(4, 4, 3, groups=4), tq.DeQuantStub()), x4), x4),
        "transposed": (_static(nn.Sequential(tq.QuantStub(), nn.ConvTranspose2d(4, 6, 3), tq.DeQuantStub()), x4), x4),
        "int4": (_quiet(tq.quantize_weight_only, nn.Sequential(nn.Linear(12, 20)), group_size=8, progress=False), x2),
        "lstm": (tq.quantize_dynamic(nn.Sequential(nn.LSTM(12, 8, batch_first=True)), {nn.LSTM}), x2.reshape(1, 3, 12)),
        "mha": (tq.quantize_dynamic(nn.Sequential(nn.MultiheadAttention(12, 2)), {nn.MultiheadAttention}),
                x2.reshape(3, 1, 12)),
    }


def _packed(m) -> torch.Tensor:
    return m._buffers["_packed_weight"] if "_packed_weight" in m._buffers else m._buffers["_w_packed"]


def _packed_layers(model):
    return [m for m in model.modules() if "_packed_weight" in m._buffers or "_w_packed" in m._buffers]


def _run(model, x):
    y = model[0](x, x, x) if type(model[0]).__name__ == "MultiheadAttention" else model(x)
    while isinstance(y, tuple):
        y = y[0]
    return y


def _expand_all(model):
    for m in _packed_layers(model):
        _ = m.qweight  # (the weight back in its buffer: the module pickles its layout as it is)


def _pickled(model) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return buf


def _cuda_shape(m) -> tuple:
    """The shape of the packed weight the packing op gives for m's weight on CUDA."""
    w = m._buffers["qweight"]
    if isinstance(m, LinearWeightOnlyInt4):
        return (m.out_features, (m.in_features + m.group_size - 1) // m.group_size * m.group_size // 2)
    if isinstance(m, tqq.Linear):
        return packed_weight_shape(w.shape[0], w.shape[1], "cuda")
    if m.transposed:
        return conv_transpose_packed_weight_shape(tuple(w.shape), m.groups, "cuda")
    return conv_packed_weight_shape(tuple(w.shape), m.groups, "cuda")


def _as_packed_for_cuda(m) -> None:
    """Puts tensors of the CUDA layout's shapes (on the CPU) in place of m's layout, recorded as
    current: what a module pickled on a CUDA machine and loaded with map_location='cpu' holds
    (a depthwise conv's layout is the same on both)."""
    b = m._buffers
    if tuple(_packed(m).shape) == tuple(_cuda_shape(m)):
        return
    if isinstance(m, LinearWeightOnlyInt4):
        G = b["weight_scale"].shape[1]
        b["_w_packed"] = torch.zeros(_cuda_shape(m), dtype=torch.uint8)
        b["_w_qp"] = torch.zeros(m.out_features, G, dtype=torch.int32)
        b["_w_scale"] = torch.ones(m.out_features, G)
        note_packed(m, ("qweight", "weight_scale", "weight_zero_point"), "_w_packed")
    else:
        b["_packed_weight"] = torch.zeros(_cuda_shape(m), dtype=torch.int8)
        note_packed(m, ("qweight",), "_packed_weight")


_FAMILIES = ["linear", "dynamic", "conv", "depthwise", "transposed", "int4", "lstm", "mha"]


@pytest.mark.parametrize("name", _FAMILIES)
def test_a_model_pickled_with_another_devices_layout_repacks_on_load(name):
    # torch.save(model) on a CUDA machine, torch.load(map_location='cpu') here: the pickled layout
    # is CUDA's, moved to the CPU; the loaded model runs with the CPU layout, as before the save.
    model, x = _models()[name]
    want = _run(model, x)
    cpu_shapes = [tuple(_packed(m).shape) for m in _packed_layers(model)]
    _expand_all(model)  # (the layout pickled as it is: a compact layer's is rebuilt when loaded anyway)
    for m in _packed_layers(model):
        _as_packed_for_cuda(m)
    loaded = torch.load(_pickled(model), map_location="cpu", weights_only=False)
    assert [tuple(_packed(m).shape) for m in _packed_layers(loaded)] == cpu_shapes
    assert torch.equal(_run(loaded, x), want)


@pytest.mark.parametrize("name", _FAMILIES)
def test_a_model_pickled_on_the_cpu_and_loaded_onto_cuda_gets_the_cuda_layout(name):
    # torch.load(map_location='cuda') of a CPU pickle, with fake CUDA tensors (the packing ops'
    # fake kernels give the CUDA layouts' shapes, and the kernels' fake versions check them).
    from torch._subclasses.fake_tensor import FakeTensorMode

    model, x = _models()[name]
    _expand_all(model)  # (a compact layer is repacked when loaded anyway; an expanded one kept its layout)
    buf = _pickled(model)
    with FakeTensorMode(allow_non_fake_inputs=True):
        loaded = torch.load(buf, map_location="cuda", weights_only=False)
        layers = _packed_layers(loaded)
        assert layers
        for m in layers:
            p = _packed(m)
            assert p.device.type == "cuda" and tuple(p.shape) == tuple(_cuda_shape(m)), type(m).__name__
        if name in ("linear", "dynamic", "int4", "conv", "transposed"):
            y = _run(loaded, x.to("cuda"))
            assert y.device.type == "cuda"


def test_a_pickled_model_on_its_own_device_keeps_its_layout():
    # The layout checked on load is the pickled one where it is current: nothing repacked.
    model, x = _models()["dynamic"]
    _expand_all(model)
    buf = _pickled(model)
    loaded = torch.load(buf, weights_only=False)
    for m in _packed_layers(loaded):
        assert not m._packed_layout_stale()
    assert torch.equal(loaded(x), model(x))


# ---------------------------------------------------------------- parametrized buffers
class _Identity(nn.Module):
    def forward(self, t):
        return t


def _layer(model):
    return next(m for m in model.modules() if "_packed_weight" in m._buffers or "_w_packed" in m._buffers)


@pytest.mark.parametrize("name", ["linear", "dynamic", "conv", "transposed", "int4", "lstm"])
@pytest.mark.parametrize("buffer", ["bias", "qweight"])
def test_a_parametrized_buffer_is_refused_by_name(name, buffer):
    model, x = _models()[name]
    want = _run(model, x)
    layer = _layer(model)
    cls = type(layer).__name__
    P.register_parametrization(layer, buffer, _Identity())
    msg = rf"{cls}: its buffer '{buffer}' is parametrized \(torch.nn.utils.parametrize"
    with pytest.raises(TypeError, match=msg):
        _run(model, x)
    with pytest.raises(TypeError, match=msg):
        layer.to("cpu")
    P.remove_parametrizations(layer, buffer)
    assert type(layer).__name__ == cls
    assert torch.equal(_run(model, x), want)


def test_a_parametrized_quantize_scale_is_refused_by_name():
    model, x = _models()["linear"]
    P.register_parametrization(model[0], "scale", _Identity())
    with pytest.raises(TypeError, match=r"Quantize: its buffer 'scale' is parametrized"):
        model(x)


def test_a_missing_buffer_that_is_not_parametrized_stays_a_key_error():
    model, x = _models()["dynamic"]
    del _layer(model)._buffers["bias"]
    with pytest.raises(KeyError, match="bias"):
        model(x)

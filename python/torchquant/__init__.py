"""torchquant: int8 quantization for PyTorch.

torch.ao.quantization's eager API (QuantStub, QConfig, prepare, convert, ...) on real int8
kernels for CPU (AVX2 / AVX-512 VNNI) and CUDA, registered as ``torch.ops.torchquant.*``.

    >>> import torch, torchquant
    >>> q = torchquant.quantize_per_tensor(torch.randn(3), 0.1, 0, torch.qint8)
    >>> q.dequantize()
"""
from . import _ops  # noqa: F401  (loads the op library; raises ImportError saying why if it cannot)
from . import reference  # noqa: F401
from ._load import LIBRARY_PATH
from .functional import (
    choose_qparams,
    dequantize,
    fake_quantize_learnable_per_channel_affine,
    fake_quantize_learnable_per_tensor_affine,
    fake_quantize_per_channel_affine,
    fake_quantize_per_tensor_affine,
    quantize_per_channel,
    quantize_per_tensor,
)
from .qtensor import QTensor
from .isa import cpu_isa, force_cpu_isa, set_cpu_isa, build_info

try:
    from ._build_config import VERSION as __version__
except ImportError:  # pragma: no cover
    __version__ = "unknown"

# ---- int8 GEMM
from .gemm import int8_mm, linear_dynamic, linear_int8, pack_weight, quantize_rowwise
from .conv import conv_int8, pack_conv_weight  # noqa: E402
from .conv_transpose import conv_transpose_int8, pack_conv_transpose_weight  # noqa: E402
# ---- observers
from . import observer  # noqa: F401
from .calibrate import calibrate, sync_observers
from .observer import (
    FixedQParamsObserver,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    MSEObserver,
    NoopObserver,
    ObserverBase,
    PercentileObserver,
    PerChannelMinMaxObserver,
    PlaceholderObserver,
    RecordingObserver,
    ReuseInputObserver,
    UniformQuantizationObserverBase,
    default_affine_fixed_qparams_observer,
    default_debug_observer,
    default_dynamic_quant_observer,
    default_fixed_qparams_range_0to1_observer,
    default_fixed_qparams_range_neg1to1_observer,
    default_float_qparams_observer,
    default_float_qparams_observer_4bit,
    default_histogram_observer,
    default_observer,
    default_per_channel_weight_observer,
    default_placeholder_observer,
    default_reuse_input_observer,
    default_symmetric_fixed_qparams_observer,
    default_weight_observer,
    per_channel_weight_observer_range_neg_127_to_127,
    weight_observer_range_neg_127_to_127,
)
# ---- eager-mode API
from . import nn  # noqa: E402
from .fake_quantize import (  # noqa: E402
    FakeQuantize,
    FakeQuantizeBase,
    FixedQParamsFakeQuantize,
    FusedMovingAvgObsFakeQuantize,
    LearnableFakeQuantize,
    default_affine_fixed_qparams_fake_quant,
    default_dynamic_fake_quant,
    default_embedding_fake_quant,
    default_embedding_fake_quant_4bit,
    default_fake_quant,
    default_fixed_qparams_range_0to1_fake_quant,
    default_fixed_qparams_range_neg1to1_fake_quant,
    default_fused_act_fake_quant,
    default_fused_per_channel_wt_fake_quant,
    default_fused_wt_fake_quant,
    default_histogram_fake_quant,
    default_per_channel_weight_fake_quant,
    default_symmetric_fixed_qparams_fake_quant,
    default_weight_fake_quant,
    fused_per_channel_wt_fake_quant_range_neg_127_to_127,
    fused_wt_fake_quant_range_neg_127_to_127,
    disable_fake_quant,
    disable_observer,
    enable_fake_quant,
    enable_observer,
)
from .qconfig import (  # noqa: E402
    QConfig,
    QConfigAny,
    QConfigDynamic,
    default_dynamic_qconfig,
    default_qat_qconfig,
    default_qconfig,
    get_default_qat_qconfig,
    get_default_qconfig,
    learnable_qat_qconfig,
    per_channel_qconfig,
    per_tensor_qconfig,
    qconfig_equals,
    reduce_range_dynamic_qconfig,
)
from .quantize import (  # noqa: E402
    ObserverOrFakeQuantize,
    QuantType,
    add_quant_dequant,
    convert,
    default_eval_fn,
    find_fusable_modules,
    fuse_modules,
    fuse_modules_qat,
    get_combined_dict,
    get_default_dynamic_quant_module_mappings,
    get_default_qat_module_mappings,
    get_default_qconfig_propagation_list,
    get_default_static_quant_module_mappings,
    get_dynamic_quant_module_class,
    get_observer_state_dict,
    get_static_quant_module_class,
    load_observer_state_dict,
    no_observer_set,
    prepare,
    prepare_qat,
    propagate_qconfig_,
    quantize,
    quantize_dynamic,
    quantize_qat,
    repack,
    swap_module,
)
from .stubs import DeQuantStub, QuantStub, QuantWrapper  # noqa: E402
from ._conv_flow import fuse_conv_bn, fuse_conv_bn_relu, fuse_convtranspose_bn, fuse_linear_bn  # noqa: E402
from . import datasets  # noqa: E402,F401
from .report import report  # noqa: E402
# ---- sequence models: weight-only embedding qconfigs ----
from .qconfig import float_qparams_weight_only_qconfig, float_qparams_weight_only_qconfig_4bit  # noqa: E402,F401
# ---- torch.ao's other named qconfigs and its module-mapping dicts ----
from .qconfig import (  # noqa: E402,F401
    default_embedding_qat_qconfig,
    default_embedding_qat_qconfig_4bit,
    default_per_channel_qconfig,
    default_per_channel_symmetric_qnnpack_qat_qconfig,
    default_per_channel_symmetric_qnnpack_qconfig,
    default_qat_qconfig_v2,
    default_symmetric_qnnpack_qat_qconfig,
    default_symmetric_qnnpack_qconfig,
    float16_dynamic_qconfig,
    float16_static_qconfig,
    per_channel_dynamic_qconfig,
)
from .nn.qat import freeze_bn_stats, update_bn_stats  # noqa: E402,F401  (QAT BatchNorm switches)
from .quantize import (  # noqa: E402,F401
    DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS,
    DEFAULT_QAT_MODULE_MAPPINGS,
    DEFAULT_STATIC_QUANT_MODULE_MAPPINGS,
    get_embedding_qat_module_mappings,
    get_embedding_static_quant_module_mappings,
)
# ---- int4 weight-only
from . import int4  # noqa: E402,F401
from .weight_only import quantize_weight_only  # noqa: E402
from .quantizable import make_quantizable  # noqa: E402

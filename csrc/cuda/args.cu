#include "cuda/args.h"

#include <ATen/ATen.h>

#include "common/checks.h"

namespace torchquant {
namespace cuda {

OutKind out_kind(at::ScalarType odt) {
  switch (odt) {
    case at::kFloat: return OutKind::Float;
    case at::kBFloat16: return OutKind::BFloat16;
    case at::kHalf: return OutKind::Half;
    case at::kChar: return OutKind::Int8;
    case at::kByte: return OutKind::UInt8;
    default:
      TORCH_CHECK(false, "argument 'out_dtype' must be torch.float32, torch.bfloat16, torch.float16, "
                  "torch.int8 or torch.uint8, got ", odt);
  }
  return OutKind::Float;
}

at::Tensor one_element(const at::Tensor& t, const char* name, bool floating, const at::Tensor& x) {
  TORCH_CHECK(t.defined(), "argument '", name, "' must be a tensor, got None");
  if (floating) {
    TORCH_CHECK(at::isFloatingType(t.scalar_type()), "argument '", name,
                "' must be a floating-point tensor, got dtype ", t.scalar_type());
  } else {
    TORCH_CHECK(at::isIntegralType(t.scalar_type(), /*includeBool=*/false), "argument '", name,
                "' must be an integer tensor, got dtype ", t.scalar_type());
  }
  TORCH_CHECK(t.numel() == 1, "argument '", name, "' must have one element (per tensor), got ",
              t.numel());
  check_same_device(x, "x", t, name);
  return t.reshape({1}).to(floating ? at::kFloat : at::kInt).contiguous();
}

at::Tensor per_channel(const at::Tensor& t, const char* name, int64_t n, const at::Tensor& x) {
  TORCH_CHECK(t.defined(), "argument '", name, "' must be a tensor, got None");
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "argument '", name,
              "' must be a floating-point tensor, got dtype ", t.scalar_type());
  TORCH_CHECK(t.numel() == n, "argument '", name, "' must have ", n,
              " elements (one per output channel), got ", t.numel());
  check_same_device(x, "x", t, name);
  return t.reshape({n}).to(at::kFloat).contiguous();
}

}  // namespace cuda
}  // namespace torchquant

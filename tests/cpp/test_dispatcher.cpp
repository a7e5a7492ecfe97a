// Loads the torchquant library into a plain C++ program and calls its ops through the
// dispatcher, comparing with the formula computed here.
#include <dlfcn.h>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <optional>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s path/to/libtorchquant.so\n", argv[0]);
    return 2;
  }
  if (dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    std::fprintf(stderr, "dlopen failed: %s\n", dlerror());
    return 1;
  }
  auto quantize = c10::Dispatcher::singleton()
                      .findSchemaOrThrow("torchquant::quantize", "")
                      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                        std::optional<int64_t>, int64_t, int64_t, at::ScalarType)>();
  at::manual_seed(0);
  const at::Tensor x = at::randn({1000}) * 3;
  const float scale = 0.02f;
  const at::Tensor q = quantize.call(x, at::full({1}, scale), at::full({1}, 3, at::kInt),
                                     std::nullopt, -128, 127, at::kChar);
  const float inv = 1.0f / scale;
  int bad = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    float t = std::nearbyint(x[i].item<float>() * inv) + 3.0f;
    t = std::fmin(std::fmax(t, -128.0f), 127.0f);
    if (static_cast<int>(t) != q[i].item<int8_t>()) ++bad;
  }
  std::printf("quantize through the dispatcher: %d of %lld values differ\n", bad,
              static_cast<long long>(x.numel()));
  return bad == 0 ? 0 : 1;
}

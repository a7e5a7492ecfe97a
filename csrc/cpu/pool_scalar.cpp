// Scalar int8 pooling kernels: the plain loops of cpu/pool_kernels.h, the oracle of the SIMD
// variants (and the planar-layout kernels of every variant). Sums are int64, so any window is
// exact.
#include <cmath>

#include "cpu/pool_kernels.h"

namespace torchquant {
namespace cpu {
namespace {

template <bool U>
inline int32_t load_q(const uint8_t* p) {
  return U ? static_cast<int32_t>(*p) : static_cast<int32_t>(static_cast<int8_t>(*p));
}

// The averaging epilogue: float32 steps, round half to even, clamp.
inline uint8_t finish_avg(int64_t sum, int64_t count, int32_t zp, bool is_unsigned) {
  const float lo = is_unsigned ? 0.0f : -128.0f, hi = is_unsigned ? 255.0f : 127.0f;
  const float inv = 1.0f / static_cast<float>(count);
  float t = std::nearbyint(static_cast<float>(sum) * inv) + static_cast<float>(zp);
  t = t < lo ? lo : (t > hi ? hi : t);
  return static_cast<uint8_t>(static_cast<int32_t>(t));
}

inline int64_t count_of(const PoolArgs& a, int64_t od, int64_t oh, int64_t ow) {
  if (a.divisor_override != 0) return a.divisor_override;
  return int64_t{a.div[0][od]} * a.div[1][oh] * a.div[2][ow];
}

// Calls f(pointer offset of the tap in units of pixels) for every valid tap of the window.
template <class F>
inline void for_taps(const PoolArgs& a, int64_t od, int64_t oh, int64_t ow, int64_t pix_h, int64_t pix_d, F&& f) {
  const int64_t fd = a.first[0][od], nd = a.taps[0][od];
  const int64_t fh = a.first[1][oh], nh = a.taps[1][oh];
  const int64_t fw = a.first[2][ow], nw = a.taps[2][ow];
  for (int64_t td = 0; td < nd; ++td) {
    const int64_t od_off = (fd + td * a.step[0]) * pix_d;
    for (int64_t th = 0; th < nh; ++th) {
      const int64_t oh_off = od_off + (fh + th * a.step[1]) * pix_h;
      for (int64_t tw = 0; tw < nw; ++tw) f(oh_off + fw + tw * a.step[2]);
    }
  }
}

template <bool U, bool MAX>
void pool_cl(const PoolArgs& a, int64_t p0, int64_t p1, int64_t c0, int64_t c1) {
  const int64_t C = a.C, D = a.in[0], H = a.in[1], W = a.in[2];
  const int64_t OD = a.out[0], OH = a.out[1], OW = a.out[2];
  const int32_t qmin = U ? 0 : -128;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t ow = p % OW, oh = (p / OW) % OH, od = (p / (OW * OH)) % OD, n = p / (OW * OH * OD);
    const uint8_t* xn = a.x + n * D * H * W * C;
    uint8_t* yp = a.y + p * C;
    for (int64_t c = c0; c < c1; ++c) {
      if (MAX) {
        int32_t m = qmin;
        for_taps(a, od, oh, ow, W, H * W, [&](int64_t pix) {
          const int32_t v = load_q<U>(xn + pix * C + c);
          m = v > m ? v : m;
        });
        yp[c] = static_cast<uint8_t>(m);
      } else {
        int64_t s = 0, n_valid = 0;
        for_taps(a, od, oh, ow, W, H * W, [&](int64_t pix) {
          s += load_q<U>(xn + pix * C + c);
          ++n_valid;
        });
        yp[c] = finish_avg(s - n_valid * a.zp, count_of(a, od, oh, ow), a.zp, U);
      }
    }
  }
}

template <bool U, bool MAX>
void pool_planar(const PoolArgs& a, int64_t r0, int64_t r1) {
  const int64_t D = a.in[0], H = a.in[1], W = a.in[2];
  const int64_t OD = a.out[0], OH = a.out[1], OW = a.out[2];
  const int32_t qmin = U ? 0 : -128;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t oh = r % OH, od = (r / OH) % OD, plane = r / (OH * OD);
    const uint8_t* xp = a.x + plane * D * H * W;
    uint8_t* yr = a.y + r * OW;
    for (int64_t ow = 0; ow < OW; ++ow) {
      if (MAX) {
        int32_t m = qmin;
        for_taps(a, od, oh, ow, W, H * W, [&](int64_t pix) {
          const int32_t v = load_q<U>(xp + pix);
          m = v > m ? v : m;
        });
        yr[ow] = static_cast<uint8_t>(m);
      } else {
        int64_t s = 0, n_valid = 0;
        for_taps(a, od, oh, ow, W, H * W, [&](int64_t pix) {
          s += load_q<U>(xp + pix);
          ++n_valid;
        });
        yr[ow] = finish_avg(s - n_valid * a.zp, count_of(a, od, oh, ow), a.zp, U);
      }
    }
  }
}

}  // namespace

void max_pool_cl__scalar(const PoolArgs& a, int64_t p0, int64_t p1, int64_t c0, int64_t c1) {
  a.is_unsigned ? pool_cl<true, true>(a, p0, p1, c0, c1) : pool_cl<false, true>(a, p0, p1, c0, c1);
}
void avg_pool_cl__scalar(const PoolArgs& a, int64_t p0, int64_t p1, int64_t c0, int64_t c1) {
  a.is_unsigned ? pool_cl<true, false>(a, p0, p1, c0, c1) : pool_cl<false, false>(a, p0, p1, c0, c1);
}
void max_pool_planar__scalar(const PoolArgs& a, int64_t r0, int64_t r1) {
  a.is_unsigned ? pool_planar<true, true>(a, r0, r1) : pool_planar<false, true>(a, r0, r1);
}
void avg_pool_planar__scalar(const PoolArgs& a, int64_t r0, int64_t r1) {
  a.is_unsigned ? pool_planar<true, false>(a, r0, r1) : pool_planar<false, false>(a, r0, r1);
}

}  // namespace cpu
}  // namespace torchquant

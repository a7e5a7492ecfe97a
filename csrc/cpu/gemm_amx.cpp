// AMX-INT8 int8 GEMM (Intel since Sapphire Rapids): tdpbusd / tdpbssd multiply a tile of 16 rows x
// 64 activation bytes by a tile of 16 groups of 4 k x 16 channels into 16 x 16 int32 sums, 16 times
// the multiply-adds of a vpdpbusd per instruction, at a sixteenth of its rate: eight times the
// int8 throughput of AVX-512 VNNI per core.
//
// The packed weight layout (gemm_kernels.h) is the weight operand's layout already: group g of a
// panel is 64 bytes, channel c's 4 k at 4c .. 4c + 3, and 16 consecutive groups are one tile
// read with a stride of 64 bytes. Activations are read in place (16 rows of 64 bytes at lda).
// uint8 activations take tdpbusd, int8 ones tdpbssd (signed x signed), so no flip is needed and
// the zero-point correction is zp * col_sums as in the oracle; the int32 sums are exact (wrapping
// modulo 2^32 on the way, as vpdpbusd's, exact in the end by K <= kMaxK), so every output is
// bit-identical to the AVX-512 VNNI kernel's and the scalar oracle's.
//
// Block: 32 rows x 2 panels in four accumulator tiles (tiles 0-3), two activation tiles (4, 5)
// and two weight tiles (6, 7): the eight tiles there are. The last K chunk of fewer than 16
// groups is multiplied from zero-padded copies (weights: per panel, activations: per row, once
// per call), and a last block of fewer than 32 rows runs under a tile configuration of that many
// rows, so no tile load reads past the caller's rows. The sums go through an L1 buffer to the
// epilogue: a fused requantize for int8 / uint8 outputs (as the AVX-512 VNNI kernel's), else
// the AVX-512 epilogue (epilogue_avx512.h), 16 columns at a time.
//
// The tile configuration is loaded at each call (it is per thread and each call may run on any
// thread of the pool) and released at the end.
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/epilogue_avx512.h"
#include "cpu/gemm_kernels.h"
#include "cpu/isa.h"
#include "cpu/scratch.h"

namespace torchquant {
namespace cpu {

#if TQ_X86
namespace {

constexpr int kTileRows = 16;       // rows of an activation / accumulator tile
constexpr int64_t kTileK = 64;      // activation bytes (16 groups of 4 k) per tile
constexpr int64_t kGroupBytes = 64; // one packed 4-k group of a panel
constexpr int kBlockRows = 2 * kTileRows;
// Below these the tile set-up, the copies and the int32 round trip through memory cost more than
// the tiles save: AVX-512 VNNI's register-blocked kernel (with its fused requantize) runs instead.
constexpr int64_t kMinRows = 16;
constexpr int64_t kMinK = 64;
constexpr int64_t kPrefetch = 2 * kTileK;  // how far ahead activation rows are prefetched

struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Tiles 0, 1 (sums) and 4 (activations) of rows0 rows, tiles 2, 3 and 5 of rows1 rows, the
// weight tiles 6, 7 of 16 groups; every row 64 bytes.
TQ_TARGET_AMX void load_config(int64_t rows0, int64_t rows1) {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof(cfg));
  cfg.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    const bool second = t == 2 || t == 3 || t == 5;
    cfg.rows[t] = static_cast<uint8_t>(t >= 6 ? kTileRows : second ? rows1 : rows0);
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
}

// Sums of a block of MT row tiles x NT panels (MT, NT in {1, 2}) into c (row i, column j at
// c[i * 32 + j]). a: the block's first row (stride lda), its K chunks [0, full) read in place,
// then (tail) the last chunk from at (stride ldat, same rows, zero-padded to 64 bytes). b: the
// first panel (panels pstride apart), its last chunk from bt (panels 1024 bytes apart).
// Runs (implicit GEMM): K is K / run runs of `run` bytes (a multiple of 64), run j of a row at
// + j * sstride; run = sstride = K for rows of K contiguous bytes.
template <int MT, int NT, bool kSigned>
TQ_TARGET_AMX void block_sums(const uint8_t* a, int64_t lda, const uint8_t* at, int64_t ldat,
                              int64_t full, bool tail, const int8_t* b, int64_t pstride,
                              const int8_t* bt, int32_t* c, int64_t run, int64_t sstride) {
  _tile_zero(0);
  if constexpr (NT == 2) _tile_zero(1);
  if constexpr (MT == 2) _tile_zero(2);
  if constexpr (MT == 2 && NT == 2) _tile_zero(3);
  auto step = [&]() {
    if constexpr (kSigned) {
      _tile_dpbssd(0, 4, 6);
      if constexpr (NT == 2) _tile_dpbssd(1, 4, 7);
      if constexpr (MT == 2) _tile_dpbssd(2, 5, 6);
      if constexpr (MT == 2 && NT == 2) _tile_dpbssd(3, 5, 7);
    } else {
      _tile_dpbusd(0, 4, 6);
      if constexpr (NT == 2) _tile_dpbusd(1, 4, 7);
      if constexpr (MT == 2) _tile_dpbusd(2, 5, 6);
      if constexpr (MT == 2 && NT == 2) _tile_dpbusd(3, 5, 7);
    }
  };
  // ak: chunk k's offset in a row (k within its run, plus the run's offset).
  for (int64_t k = 0, ak = 0, in_run = 0; k < full; k += kTileK, ak += kTileK, in_run += kTileK) {
    if (in_run == run) {
      in_run = 0;
      ak += sstride - run;
    }
    // The activation rows' chunk kPrefetch bytes ahead (in the same run), past the end of K the
    // next block's first chunks (rows follow each other at lda in every caller; a prefetch
    // never faults). Tile loads of rows lda apart get no help from the hardware prefetchers:
    // without this the loop waited on L2 and ran at half the speed.
    const int64_t ahead = k + kPrefetch;
    const uint8_t* pf = ahead >= full ? a + MT * kTileRows * lda + (ahead - full)
                        : in_run + kPrefetch < run ? a + ak + kPrefetch
                                                   : a + ak + (sstride - run) + kPrefetch;
    for (int i = 0; i < MT * kTileRows; ++i)
      _mm_prefetch(reinterpret_cast<const char*>(pf + i * lda), _MM_HINT_T0);
    _tile_loadd(4, a + ak, lda);
    if constexpr (MT == 2) _tile_loadd(5, a + kTileRows * lda + ak, lda);
    _tile_loadd(6, b + k * 16, kGroupBytes);  // k / 4 groups of 64 bytes
    if constexpr (NT == 2) _tile_loadd(7, b + pstride + k * 16, kGroupBytes);
    step();
  }
  if (tail) {
    _tile_loadd(4, at, ldat);
    if constexpr (MT == 2) _tile_loadd(5, at + kTileRows * ldat, ldat);
    _tile_loadd(6, bt, kGroupBytes);
    if constexpr (NT == 2) _tile_loadd(7, bt + 16 * kGroupBytes, kGroupBytes);
    step();
  }
  constexpr int64_t ldc = 32 * sizeof(int32_t);
  _tile_stored(0, c, ldc);
  if constexpr (NT == 2) _tile_stored(1, c + 16, ldc);
  if constexpr (MT == 2) _tile_stored(2, c + 16 * 32, ldc);
  if constexpr (MT == 2 && NT == 2) _tile_stored(3, c + 16 * 32 + 16, ldc);
}

template <bool kSigned>
TQ_TARGET_AMX void block_dispatch(int mt, int nt, const uint8_t* a, int64_t lda, const uint8_t* at,
                                  int64_t ldat, int64_t full, bool tail, const int8_t* b,
                                  int64_t pstride, const int8_t* bt, int32_t* c, int64_t run,
                                  int64_t sstride) {
  if (mt == 2) {
    if (nt == 2) {
      block_sums<2, 2, kSigned>(a, lda, at, ldat, full, tail, b, pstride, bt, c, run, sstride);
    } else {
      block_sums<2, 1, kSigned>(a, lda, at, ldat, full, tail, b, pstride, bt, c, run, sstride);
    }
  } else if (nt == 2) {
    block_sums<1, 2, kSigned>(a, lda, at, ldat, full, tail, b, pstride, bt, c, run, sstride);
  } else {
    block_sums<1, 1, kSigned>(a, lda, at, ldat, full, tail, b, pstride, bt, c, run, sstride);
  }
}

// The fused requantize (int8 / uint8 out, nan_free, per-tensor activation qparams) of two rows
// of a block's sums (32 columns each, d1 null for none): the AVX-512 VNNI kernel's requant16 /
// requant_pack (epilogue_avx512.h); two rows of 32 columns are one 64-byte pack.
TQ_TARGET_AMX inline void q_rows2(const GemmProblem& p, const int32_t* c, const int32_t* zc,
                                  const float* sc, const float* bc, uint8_t* d0, uint8_t* d1,
                                  __mmask32 keep) {
  const float inv = p.out_inv_scale;
  const __m512i bytes = requant_pack(
      requant16(_mm512_load_si512(c), zc, sc, bc, inv),
      requant16(_mm512_load_si512(c + 16), zc + 16, sc + 16, bc + 16, inv),
      requant16(_mm512_load_si512(c + 32), zc, sc, bc, inv),
      requant16(_mm512_load_si512(c + 48), zc + 16, sc + 16, bc + 16, inv),
      static_cast<int16_t>(p.out_zp), p.relu, p.out_kind == GemmOut::QUInt8);
  if (d0 != nullptr) _mm256_mask_storeu_epi8(d0, keep, _mm512_castsi512_si256(bytes));
  if (d1 != nullptr) _mm256_mask_storeu_epi8(d1, keep, _mm512_extracti64x4_epi64(bytes, 1));
}

}  // namespace

int gemm_mr__amx() { return kTileRows; }

int64_t gemm_task_panels__amx() { return 4; }

namespace {

// Rows [m0, m1) of a (row m at a + m * lda; its K bytes in runs, see block_sums) x panels
// [p0, p1). out_row, or null: row m's output row is out_row[m - m0] (none when negative), else m.
TQ_TARGET_AMX void compute_tiles(const GemmProblem& p, const uint8_t* a, int64_t lda, int64_t m0,
                                 int64_t m1, int64_t p0, int64_t p1, int64_t run, int64_t sstride,
                                 const int32_t* out_row) {
  const int64_t K = p.K, rows = m1 - m0;
  const uint8_t* a0 = a + m0 * lda;
  const int64_t pstride = K * kPanel;
  const int64_t full = K / kTileK * kTileK, rest = K - full;  // rest: a multiple of 4
  const bool tail = rest != 0;
  const int64_t whole = rows / kBlockRows * kBlockRows;  // rows in blocks of 32
  const int64_t left = rows - whole;                     // rows of the last block (< 32)
  // Scratch for the last K chunk when K % 64 != 0: the weights' (1 KiB per panel) and the
  // activations' (64 bytes per row), zero-padded to 64 bytes.
  thread_local std::vector<int8_t> wt_buf;
  thread_local std::vector<uint8_t> at_buf;
  int8_t* wt = tail ? scratch(wt_buf, static_cast<size_t>((p1 - p0) * 16 * kGroupBytes)) : nullptr;
  uint8_t* at = tail ? scratch(at_buf, static_cast<size_t>(rows * kTileK)) : nullptr;
  if (tail) {
    for (int64_t pp = p0; pp < p1; ++pp) {
      int8_t* d = wt + (pp - p0) * 16 * kGroupBytes;
      std::memcpy(d, p.w + pp * pstride + full * 16, static_cast<size_t>(rest * 16));
      std::memset(d + rest * 16, 0, static_cast<size_t>((kTileK - rest) * 16));
    }
    for (int64_t i = 0; i < rows; ++i) {
      std::memcpy(at + i * kTileK, a0 + i * lda + full, static_cast<size_t>(rest));
      std::memset(at + i * kTileK + rest, 0, static_cast<size_t>(kTileK - rest));
    }
  }
  const bool per_tensor = p.a_zp_row == nullptr && p.a_scale_row == nullptr;
  const bool fuse = per_tensor && p.nan_free &&
                    (p.out_kind == GemmOut::QInt8 || p.out_kind == GemmOut::QUInt8);
  const EpiConsts512 e = epi_consts512(p);
  alignas(64) int32_t c[kBlockRows * 32];
  alignas(64) int32_t zc[32];
  alignas(64) float sc[32];
  alignas(64) float bc[32];
  // Rows [r, r + nr) (nr <= 32; the tile configuration's rows) x panels [pp, pp + nt): sums,
  // then the epilogue.
  auto block = [&](int64_t r, int64_t nr, int64_t pp, int nt) TQ_TARGET_AMX {
    const int64_t n0 = pp * kPanel;
    const int64_t ncols = (p.N - n0) < nt * kPanel ? (p.N - n0) : nt * kPanel;
    const int8_t* b = p.w + pp * pstride;
    const int8_t* bt = tail ? wt + (pp - p0) * 16 * kGroupBytes : nullptr;
    const int mt = nr > kTileRows ? 2 : 1;
    const uint8_t* atb = tail ? at + r * kTileK : nullptr;
    if (p.a_unsigned) {
      block_dispatch<false>(mt, nt, a0 + r * lda, lda, atb, kTileK, full, tail, b, pstride, bt, c,
                            run, sstride);
    } else {
      block_dispatch<true>(mt, nt, a0 + r * lda, lda, atb, kTileK, full, tail, b, pstride, bt, c,
                           run, sstride);
    }
    // Row i's output row, or -1.
    auto dest = [&](int64_t i) -> int64_t {
      return out_row != nullptr ? out_row[r + i] : m0 + r + i;
    };
    if (fuse) {
      const __mmask32 keep = ncols >= 32 ? ~__mmask32{0} : (__mmask32{1} << ncols) - 1;
      uint8_t* out = static_cast<uint8_t*>(p.out) + n0;
      for (int64_t i = 0; i < nr; i += 2) {
        const int64_t d0 = dest(i), d1 = i + 1 < nr ? dest(i + 1) : -1;
        q_rows2(p, c + i * 32, zc, sc, bc, d0 >= 0 ? out + d0 * p.ldo : nullptr,
                d1 >= 0 ? out + d1 * p.ldo : nullptr, keep);
      }
      return;
    }
    for (int64_t i = 0; i < nr; ++i) {
      const int64_t d = dest(i);
      if (d >= 0) {
        if (per_tensor) {
          epilogue_row512<true>(p, e, c + i * 32, d, n0, ncols, 0, 0.0f, zc, sc);
        } else {
          epilogue_row512<false>(p, e, c + i * 32, d, n0, ncols,
                                 p.a_zp_row != nullptr ? p.a_zp_row[d] : p.a_zp,
                                 p.a_scale_row != nullptr ? p.a_scale_row[d] : p.a_scale, nullptr,
                                 nullptr);
        }
      }
    }
  };
  // The per-tensor corrections, scales and biases of panels [pp, pp + nt) (lanes past N: zero).
  auto consts = [&](int64_t pp, int nt) TQ_TARGET_AMX {
    if (!per_tensor) return;
    const int64_t n0 = pp * kPanel;
    const int64_t ncols = (p.N - n0) < nt * kPanel ? (p.N - n0) : nt * kPanel;
    const __m512i vzp = _mm512_set1_epi32(p.a_zp);
    const __m512 vas = _mm512_set1_ps(p.a_scale);
    for (int64_t j = 0; j < 32; j += 16) {
      const int64_t l = ncols - j;
      const __mmask16 k = l >= 16 ? __mmask16(0xFFFF)
                          : l <= 0 ? __mmask16(0)
                                   : static_cast<__mmask16>((1u << l) - 1u);
      _mm512_store_si512(zc + j, _mm512_mullo_epi32(vzp, _mm512_maskz_loadu_epi32(k, p.col_sums + n0 + j)));
      _mm512_store_ps(sc + j, p.out_kind == GemmOut::Int32
                                  ? _mm512_setzero_ps()
                                  : _mm512_mul_ps(vas, _mm512_maskz_loadu_ps(k, p.w_scale + n0 + j)));
      // No bias: +0.0, which changes at most the sign of a zero y and no output.
      _mm512_store_ps(bc + j, p.bias != nullptr ? _mm512_maskz_loadu_ps(k, p.bias + n0 + j)
                                                : _mm512_setzero_ps());
    }
  };
  // Blocks of 32 rows, panel pair by panel pair (a pair's weights stay in cache while the rows
  // pass), then the last rows with a configuration of that many rows (no copy, no read past
  // them).
  if (whole != 0) {
    load_config(kTileRows, kTileRows);
    for (int64_t pp = p0; pp < p1; pp += 2) {
      const int nt = p1 - pp >= 2 ? 2 : 1;
      consts(pp, nt);
      for (int64_t r = 0; r < whole; r += kBlockRows) block(r, kBlockRows, pp, nt);
    }
  }
  if (left != 0) {
    load_config(left < kTileRows ? left : kTileRows, left > kTileRows ? left - kTileRows : kTileRows);
    for (int64_t pp = p0; pp < p1; pp += 2) {
      const int nt = p1 - pp >= 2 ? 2 : 1;
      consts(pp, nt);
      block(whole, left, pp, nt);
    }
  }
  _tile_release();
}

}  // namespace

TQ_TARGET_AMX void gemm_compute__amx(const GemmProblem& p, const void* a, int64_t lda, int64_t m0,
                                     int64_t m1, int64_t p0, int64_t p1) {
  if (p.K % 4 != 0 || p.K < kMinK || m1 - m0 < kMinRows || p0 >= p1) {
    gemm_compute__avx512vnni(p, a, lda, m0, m1, p0, p1);
    return;
  }
  compute_tiles(p, static_cast<const uint8_t*>(a), lda, m0, m1, p0, p1, p.K, p.K, nullptr);
}

TQ_TARGET_AMX void gemm_compute_runs__amx(const GemmProblem& p, const uint8_t* a, int64_t lda,
                                          int64_t rows, int64_t run, int64_t sstride,
                                          const int32_t* out_row, int64_t p0, int64_t p1) {
  if (rows <= 0 || p0 >= p1) return;
  compute_tiles(p, a, lda, 0, rows, p0, p1, run, sstride, out_row);
}

#else  // not x86: never selected; keep the symbols for one signature set.

int gemm_mr__amx() { return gemm_mr__scalar(); }
int64_t gemm_task_panels__amx() { return gemm_task_panels__scalar(); }
void gemm_compute__amx(const GemmProblem& p, const void* a, int64_t lda, int64_t m0, int64_t m1,
                       int64_t p0, int64_t p1) {
  gemm_compute__scalar(p, a, lda, m0, m1, p0, p1);
}
void gemm_compute_runs__amx(const GemmProblem&, const uint8_t*, int64_t, int64_t, int64_t, int64_t,
                            const int32_t*, int64_t, int64_t) {}
#endif

}  // namespace cpu
}  // namespace torchquant

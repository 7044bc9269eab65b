// The fast CPU path. Two kernel families over the CpuTernaryWeights layout:
//
// int8: maddubs(code, xq) with code = q + 1 in {0, 1, 2} (unsigned) and xq
//   signed computes sum (q + 1) * xq exactly (|pair| <= 512, no int16
//   saturation); subtracting sum xq (once per row) leaves sum q * xq. This
//   avoids _mm256_sign_epi8, which maps -128 * -1 to -128. int16 partial sums
//   are widened to int32 every kChunkGroups groups (60 maddubs, |sum| <=
//   30720), so the result equals the oracle's int32 accumulator exactly.
// none: codes are decoded to float for 12 columns at a time and multiplied by
//   a zero-padded copy of x with FMA (4x3 register tile); each lane sums 64
//   terms of a 512-column chunk in float, then chunks add up in double, which
//   bounds the error near 64 * 2^-24 of the dot product's magnitude.
//
// AVX2 functions live in a `#pragma GCC target("avx2,fma")` region inside an
// anonymous namespace: no other code is compiled for AVX2 (no -mavx2 on the
// file, so no AVX2 instructions leak into shared inline functions), and they
// are only called after __builtin_cpu_supports("avx2") and ("fma").
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "kernels/activation.h"
#include "kernels/ternary_format.h"
#include "kernels/ternary_gemm.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define BITNET_CPU_X86 1
#include <immintrin.h>
#else
#define BITNET_CPU_X86 0
#endif

namespace bitnet {
namespace {

constexpr int64_t kGroupCols = CpuTernaryWeights::kGroupCols;
constexpr int64_t kGroupBytes = CpuTernaryWeights::kGroupBytes;
// int16 accumulators: 4 maddubs per group, each adds at most 512 in
// magnitude per lane (2 * 2 * 128), so 15 groups stay within 30720 < 32767.
constexpr int64_t kChunkGroups = 15;
// none mode: float accumulation span before flushing to double.
constexpr int64_t kFloatChunkCols = 512;
// Work is split into tiles of output; threads take tiles dynamically.
constexpr int64_t kTileRows = 64;
// none mode: 16 rows of fp32 x (256 KiB at K = 4096) fit in L2 while the task
// walks its columns (64 rows would be 1 MiB). No measurable change on the Zen 3
// test machine, where the FMA tile is the bound; kept to bound the working set.
constexpr int64_t kTileRowsFloat = 16;
constexpr int64_t kTileCols = 64;
// none mode: columns decoded to float at a time (per worker scratch).
constexpr int64_t kDecodeCols = 12;  // 4 tiles of the 4x3 float kernel
// Row strides of the activation and decoded-weight buffers are padded by one
// cache line: at K = 4096 the unpadded strides are multiples of 4 KiB, so all
// rows of a tile would map to the same L1 sets (no measurable change on Zen 3's
// 8-way L1, but it costs nothing and avoids the pathology elsewhere).
constexpr int64_t kStridePadBytes = 64;

int ResolveThreads(int requested) {
  if (requested > 0) return requested;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

// Runs fn(task, worker) for task in [0, num_tasks) on up to num_workers
// threads (the caller is worker 0). If a thread cannot be started the
// remaining workers simply take more tasks.
void ParallelFor(int64_t num_tasks, int num_workers,
                 const std::function<void(int64_t, int)>& fn) {
  if (num_tasks <= 0) return;
  num_workers = static_cast<int>(std::clamp<int64_t>(num_workers, 1, num_tasks));
  std::atomic<int64_t> next{0};
  auto run = [&](int worker) {
    for (int64_t t; (t = next.fetch_add(1, std::memory_order_relaxed)) < num_tasks;) {
      fn(t, worker);
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(num_workers - 1);
  for (int w = 1; w < num_workers; ++w) {
    try {
      threads.emplace_back(run, w);
    } catch (const std::system_error&) {
      break;
    }
  }
  run(0);
  for (std::thread& t : threads) t.join();
}

// Quantized activations in the kernels' layout: rows padded to a multiple of
// 128 with zeros (so padding codes contribute nothing), plus per-row scale s
// and sum of xq.
struct Int8Activations {
  int64_t stride = 0;  // groups * 128 + kStridePadBytes
  std::vector<int8_t> xq;
  std::vector<float> row_scale;
  std::vector<int32_t> row_sum;
};

void QuantizeRowScalar(const float* x, int64_t k, int64_t stride, int8_t* xq,
                       float* row_scale, int32_t* row_sum) {
  float abs_max = 0.0f;
  for (int64_t c = 0; c < k; ++c) abs_max = std::max(abs_max, std::fabs(x[c]));
  const float s = Int8RowScale(abs_max);
  int32_t sum = 0;
  for (int64_t c = 0; c < k; ++c) {
    xq[c] = QuantizeInt8(x[c], s);
    sum += xq[c];
  }
  std::memset(xq + k, 0, stride - k);
  *row_scale = s;
  *row_sum = sum;
}

// ---- scalar kernels (any CPU) ---------------------------------------------

int32_t Int8DotScalar(const int8_t* xq, const uint8_t* codes, int64_t groups) {
  int32_t acc = 0;
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t p = 0; p < 4; ++p) {
      for (int64_t b = 0; b < kGroupBytes; ++b) {
        const int code = (codes[g * kGroupBytes + b] >> (2 * p)) & 3;
        acc += (code - 1) * xq[g * kGroupCols + p * 32 + b];
      }
    }
  }
  return acc;
}

double FloatDotScalar(const float* x, int64_t k, const uint8_t* codes) {
  double acc = 0.0;
  for (int64_t c = 0; c < k; ++c) {
    const int64_t g = c / kGroupCols, within = c % kGroupCols;
    const int code = (codes[g * kGroupBytes + within % 32] >> (2 * (within / 32))) & 3;
    acc += static_cast<double>(x[c]) * (code - 1);
  }
  return acc;
}

#if BITNET_CPU_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma")

inline int32_t HsumEpi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

inline double HsumPsToDouble(__m256 v) {
  const __m256d d = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)),
                                  _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, d);
  return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
}

void QuantizeRowAvx2(const float* x, int64_t k, int64_t stride, int8_t* xq,
                     float* row_scale, int32_t* row_sum) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 vmax = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 8 <= k; c += 8) {
    vmax = _mm256_max_ps(vmax, _mm256_and_ps(_mm256_loadu_ps(x + c), abs_mask));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vmax);
  float abs_max = 0.0f;
  for (float l : lanes) abs_max = std::max(abs_max, l);
  for (; c < k; ++c) abs_max = std::max(abs_max, std::fabs(x[c]));
  const float s = Int8RowScale(abs_max);

  // x * s is one float multiply, and cvtps rounds to nearest even (the
  // default MXCSR mode, as nearbyint); the saturating packs are the clamp.
  const __m256 vs = _mm256_set1_ps(s);
  const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  const __m256i ones8 = _mm256_set1_epi8(1);
  const __m256i ones16 = _mm256_set1_epi16(1);
  __m256i vsum = _mm256_setzero_si256();
  c = 0;
  for (; c + 32 <= k; c += 32) {
    const __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + c), vs));
    const __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + c + 8), vs));
    const __m256i d = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + c + 16), vs));
    const __m256i e = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + c + 24), vs));
    const __m256i packed = _mm256_permutevar8x32_epi32(
        _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(d, e)), perm);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(xq + c), packed);
    vsum = _mm256_add_epi32(
        vsum, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, packed), ones16));
  }
  int32_t sum = HsumEpi32(vsum);
  for (; c < k; ++c) {
    xq[c] = QuantizeInt8(x[c], s);
    sum += xq[c];
  }
  std::memset(xq + k, 0, stride - k);
  *row_scale = s;
  *row_sum = sum;
}

// Calls f(integral_constant<int, 0>) ... f(integral_constant<int, N-1>), so
// array indices in the generic kernel are compile-time constants.
template <int N, typename F>
__attribute__((always_inline)) inline void Unroll(F&& f) {
  [&]<int... I>(std::integer_sequence<int, I...>) {
    (f(std::integral_constant<int, I>{}), ...);
  }(std::make_integer_sequence<int, N>{});
}

// out[r][j] = sum over the padded row of (q_j + 1) * xq_r, i.e. the ternary
// dot product plus sum(xq_r); the caller subtracts row_sum. Generic version
// for edge tiles; the hot shapes (4x2, 1x4) are written out by hand below.
template <int MR, int NR>
void Int8TileAvx2(const int8_t* xq, int64_t stride, const uint8_t* const* w,
                  int64_t groups, int32_t (*out)[NR]) {
  const __m256i mask = _mm256_set1_epi8(3);
  const __m256i ones16 = _mm256_set1_epi16(1);
  int32_t total[MR][NR] = {};
  for (int64_t g0 = 0; g0 < groups; g0 += kChunkGroups) {
    const int64_t g1 = std::min(groups, g0 + kChunkGroups);
    __m256i acc[MR][NR];
    Unroll<MR>([&](auto r) { Unroll<NR>([&](auto j) { acc[r][j] = _mm256_setzero_si256(); }); });
    for (int64_t g = g0; g < g1; ++g) {
      __m256i wv[NR];
      Unroll<NR>([&](auto j) {
        wv[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[j] + g * kGroupBytes));
      });
      Unroll<4>([&](auto p) {
        __m256i code[NR];
        Unroll<NR>([&](auto j) {
          code[j] = _mm256_and_si256(wv[j], mask);
          wv[j] = _mm256_srli_epi16(wv[j], 2);
        });
        Unroll<MR>([&](auto r) {
          const __m256i xv = _mm256_loadu_si256(
              reinterpret_cast<const __m256i*>(xq + r * stride + g * kGroupCols + p * 32));
          Unroll<NR>([&](auto j) {
            acc[r][j] = _mm256_add_epi16(acc[r][j], _mm256_maddubs_epi16(code[j], xv));
          });
        });
      });
    }
    // Widen to int32 and fold into scalars: keeps only MR*NR vector
    // accumulators live, which is what lets 4x2 fit in 16 registers.
    Unroll<MR>([&](auto r) {
      Unroll<NR>([&](auto j) {
        total[r][j] += HsumEpi32(_mm256_madd_epi16(acc[r][j], ones16));
      });
    });
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) out[r][j] = total[r][j];
}

// acc += maddubs(code, x), then an empty asm that pins the running sum in a
// register: without it GCC reassociates the integer adds into a tree whose
// temporaries spill, and GCC also kept accumulator *arrays* on the stack,
// hence named variables in the two hot kernels.
#define BITNET_MADDUBS_ACC(acc, code, xv)                          \
  do {                                                             \
    acc = _mm256_add_epi16(acc, _mm256_maddubs_epi16(code, xv));   \
    asm("" : "+x"(acc));                                           \
  } while (0)

// 4 rows x 2 columns: 8 accumulators + 2 weight vectors + 2 codes + x + mask.
void Int8Tile4x2Avx2(const int8_t* xq, int64_t stride, const uint8_t* const* w,
                     int64_t groups, int32_t (*out)[2]) {
  const __m256i mask = _mm256_set1_epi8(3);
  const __m256i ones16 = _mm256_set1_epi16(1);
  const int8_t* x0 = xq;
  const int8_t* x1 = xq + stride;
  const int8_t* x2 = xq + 2 * stride;
  const int8_t* x3 = xq + 3 * stride;
  const uint8_t* w0 = w[0];
  const uint8_t* w1 = w[1];
  int32_t t[4][2] = {};
  for (int64_t g0 = 0; g0 < groups; g0 += kChunkGroups) {
    const int64_t g1 = std::min(groups, g0 + kChunkGroups);
    __m256i a00 = _mm256_setzero_si256(), a01 = a00, a10 = a00, a11 = a00,
            a20 = a00, a21 = a00, a30 = a00, a31 = a00;
    for (int64_t g = g0; g < g1; ++g) {
      __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0 + g * kGroupBytes));
      __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w1 + g * kGroupBytes));
      const int64_t base = g * kGroupCols;
#pragma GCC unroll 4
      for (int p = 0; p < 4; ++p) {
        const __m256i c0 = _mm256_and_si256(v0, mask);
        const __m256i c1 = _mm256_and_si256(v1, mask);
        v0 = _mm256_srli_epi16(v0, 2);
        v1 = _mm256_srli_epi16(v1, 2);
        const int64_t off = base + p * 32;
        __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x0 + off));
        BITNET_MADDUBS_ACC(a00, c0, xv);
        BITNET_MADDUBS_ACC(a01, c1, xv);
        xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x1 + off));
        BITNET_MADDUBS_ACC(a10, c0, xv);
        BITNET_MADDUBS_ACC(a11, c1, xv);
        xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x2 + off));
        BITNET_MADDUBS_ACC(a20, c0, xv);
        BITNET_MADDUBS_ACC(a21, c1, xv);
        xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x3 + off));
        BITNET_MADDUBS_ACC(a30, c0, xv);
        BITNET_MADDUBS_ACC(a31, c1, xv);
      }
    }
    t[0][0] += HsumEpi32(_mm256_madd_epi16(a00, ones16));
    t[0][1] += HsumEpi32(_mm256_madd_epi16(a01, ones16));
    t[1][0] += HsumEpi32(_mm256_madd_epi16(a10, ones16));
    t[1][1] += HsumEpi32(_mm256_madd_epi16(a11, ones16));
    t[2][0] += HsumEpi32(_mm256_madd_epi16(a20, ones16));
    t[2][1] += HsumEpi32(_mm256_madd_epi16(a21, ones16));
    t[3][0] += HsumEpi32(_mm256_madd_epi16(a30, ones16));
    t[3][1] += HsumEpi32(_mm256_madd_epi16(a31, ones16));
  }
  for (int r = 0; r < 4; ++r)
    for (int j = 0; j < 2; ++j) out[r][j] = t[r][j];
}

// 1 row x 4 columns (M = 1, the latency case): the x vector is shared by four
// columns, the four code vectors are decoded once each.
void Int8Tile1x4Avx2(const int8_t* xq, int64_t /*stride*/, const uint8_t* const* w,
                     int64_t groups, int32_t (*out)[4]) {
  const __m256i mask = _mm256_set1_epi8(3);
  const __m256i ones16 = _mm256_set1_epi16(1);
  const uint8_t* w0 = w[0];
  const uint8_t* w1 = w[1];
  const uint8_t* w2 = w[2];
  const uint8_t* w3 = w[3];
  int32_t t[4] = {};
  for (int64_t g0 = 0; g0 < groups; g0 += kChunkGroups) {
    const int64_t g1 = std::min(groups, g0 + kChunkGroups);
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t g = g0; g < g1; ++g) {
      __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0 + g * kGroupBytes));
      __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w1 + g * kGroupBytes));
      __m256i v2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w2 + g * kGroupBytes));
      __m256i v3 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w3 + g * kGroupBytes));
      const int64_t base = g * kGroupCols;
#pragma GCC unroll 4
      for (int p = 0; p < 4; ++p) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + base + p * 32));
        BITNET_MADDUBS_ACC(a0, _mm256_and_si256(v0, mask), xv);
        BITNET_MADDUBS_ACC(a1, _mm256_and_si256(v1, mask), xv);
        BITNET_MADDUBS_ACC(a2, _mm256_and_si256(v2, mask), xv);
        BITNET_MADDUBS_ACC(a3, _mm256_and_si256(v3, mask), xv);
        v0 = _mm256_srli_epi16(v0, 2);
        v1 = _mm256_srli_epi16(v1, 2);
        v2 = _mm256_srli_epi16(v2, 2);
        v3 = _mm256_srli_epi16(v3, 2);
      }
    }
    t[0] += HsumEpi32(_mm256_madd_epi16(a0, ones16));
    t[1] += HsumEpi32(_mm256_madd_epi16(a1, ones16));
    t[2] += HsumEpi32(_mm256_madd_epi16(a2, ones16));
    t[3] += HsumEpi32(_mm256_madd_epi16(a3, ones16));
  }
  for (int j = 0; j < 4; ++j) out[0][j] = t[j];
}

#undef BITNET_MADDUBS_ACC

// Decodes `count` rows of codes to float q in {-1, 0, 1}, [count, groups*128].
// Row j starts at out + j * stride.
void DecodeFloatAvx2(const CpuTernaryWeights& weights, int64_t first, int64_t count,
                     int64_t stride, float* out) {
  const int64_t groups = weights.groups();
  const __m256i mask = _mm256_set1_epi8(3);
  const __m256 one = _mm256_set1_ps(1.0f);
  for (int64_t j = 0; j < count; ++j) {
    const uint8_t* codes = weights.row_codes(first + j);
    float* dst = out + j * stride;
    for (int64_t g = 0; g < groups; ++g) {
      __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + g * kGroupBytes));
      for (int p = 0; p < 4; ++p) {
        const __m256i c = _mm256_and_si256(v, mask);
        v = _mm256_srli_epi16(v, 2);
        const __m128i lo = _mm256_castsi256_si128(c);
        const __m128i hi = _mm256_extracti128_si256(c, 1);
        const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
        float* d = dst + g * kGroupCols + p * 32;
        for (int q = 0; q < 4; ++q) {
          _mm256_storeu_ps(d + 8 * q, _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[q])), one));
        }
      }
    }
  }
}

// out[r][j] = sum over c in [0, len) of x_r[c] * wf_j[c], len <= 512 and a
// multiple of 8: one chunk, accumulated in float lanes, summed into double.
// The hot none-mode tile, by hand: 12 accumulators, 3 weight vectors and x
// pinned in a register (GCC otherwise folds the x load into every FMA, 10
// loads per 8 FMAs, which measured ~20% slower).
void FloatChunk4x3Avx2(const float* x, int64_t stride, const float* wf, int64_t len,
                       double (*out)[3]) {
  __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a10 = a00, a11 = a00,
         a12 = a00, a20 = a00, a21 = a00, a22 = a00, a30 = a00, a31 = a00, a32 = a00;
  const float* x0 = x;
  const float* x1 = x + stride;
  const float* x2 = x + 2 * stride;
  const float* x3 = x + 3 * stride;
  const float* w0 = wf;
  const float* w1 = wf + stride;
  const float* w2 = wf + 2 * stride;
  for (int64_t c = 0; c < len; c += 8) {
    const __m256 v0 = _mm256_loadu_ps(w0 + c);
    const __m256 v1 = _mm256_loadu_ps(w1 + c);
    const __m256 v2 = _mm256_loadu_ps(w2 + c);
    __m256 xv = _mm256_loadu_ps(x0 + c);
    asm("" : "+x"(xv));
    a00 = _mm256_fmadd_ps(xv, v0, a00);
    a01 = _mm256_fmadd_ps(xv, v1, a01);
    a02 = _mm256_fmadd_ps(xv, v2, a02);
    xv = _mm256_loadu_ps(x1 + c);
    asm("" : "+x"(xv));
    a10 = _mm256_fmadd_ps(xv, v0, a10);
    a11 = _mm256_fmadd_ps(xv, v1, a11);
    a12 = _mm256_fmadd_ps(xv, v2, a12);
    xv = _mm256_loadu_ps(x2 + c);
    asm("" : "+x"(xv));
    a20 = _mm256_fmadd_ps(xv, v0, a20);
    a21 = _mm256_fmadd_ps(xv, v1, a21);
    a22 = _mm256_fmadd_ps(xv, v2, a22);
    xv = _mm256_loadu_ps(x3 + c);
    asm("" : "+x"(xv));
    a30 = _mm256_fmadd_ps(xv, v0, a30);
    a31 = _mm256_fmadd_ps(xv, v1, a31);
    a32 = _mm256_fmadd_ps(xv, v2, a32);
  }
  const __m256 acc[4][3] = {{a00, a01, a02}, {a10, a11, a12}, {a20, a21, a22}, {a30, a31, a32}};
  for (int r = 0; r < 4; ++r)
    for (int j = 0; j < 3; ++j) out[r][j] = HsumPsToDouble(acc[r][j]);
}

// Generic version for edge tiles; same per-lane summation order.
template <int MR, int NR>
void FloatChunkAvx2(const float* x, int64_t stride, const float* wf, int64_t len,
                    double (*out)[NR]) {
  if constexpr (MR == 4 && NR == 3) {
    FloatChunk4x3Avx2(x, stride, wf, len, out);
    return;
  }
  __m256 acc[MR][NR];
  Unroll<MR>([&](auto r) { Unroll<NR>([&](auto j) { acc[r][j] = _mm256_setzero_ps(); }); });
  for (int64_t c = 0; c < len; c += 8) {
    __m256 wv[NR];
    Unroll<NR>([&](auto j) { wv[j] = _mm256_loadu_ps(wf + j * stride + c); });
    Unroll<MR>([&](auto r) {
      const __m256 xv = _mm256_loadu_ps(x + r * stride + c);
      Unroll<NR>([&](auto j) { acc[r][j] = _mm256_fmadd_ps(xv, wv[j], acc[r][j]); });
    });
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) out[r][j] = HsumPsToDouble(acc[r][j]);
}

#pragma GCC pop_options
#endif  // BITNET_CPU_X86

// ---- tile drivers -----------------------------------------------------------

struct TileContext {
  const TernaryGemmArgs* args;
  const CpuTernaryWeights* weights;
  bool simd;
};

// `raw_acc` from the AVX2 kernels is sum (q + 1) * xq (they multiply the
// unsigned codes), so row i's sum of xq comes off; the scalar kernel already
// returns sum q * xq.
void StoreInt8(const TileContext& t, const Int8Activations& a, int64_t i, int64_t j,
               int32_t raw_acc) {
  const int64_t n = t.weights->rows();
  const int32_t acc = raw_acc - (t.simd ? a.row_sum[i] : 0);
  const float bias = t.args->bias != nullptr ? t.args->bias[j] : 0.0f;
  t.args->y[i * n + j] = ApplyActivation(
      t.args->activation,
      Int8Dequantize(acc, t.weights->scale(j), a.row_scale[i], bias));
}

#if BITNET_CPU_X86
template <int MR, int NR>
void RunInt8Tile(const TileContext& t, const Int8Activations& a, int64_t i, int64_t j) {
  const uint8_t* w[NR];
  for (int q = 0; q < NR; ++q) w[q] = t.weights->row_codes(j + q);
  int32_t out[MR][NR];
  const int8_t* xq = a.xq.data() + i * a.stride;
  if constexpr (MR == 4 && NR == 2) {
    Int8Tile4x2Avx2(xq, a.stride, w, t.weights->groups(), out);
  } else if constexpr (MR == 1 && NR == 4) {
    Int8Tile1x4Avx2(xq, a.stride, w, t.weights->groups(), out);
  } else {
    Int8TileAvx2<MR, NR>(xq, a.stride, w, t.weights->groups(), out);
  }
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < NR; ++q) StoreInt8(t, a, i + r, j + q, out[r][q]);
}

// Runs the columns [n0, n1) for MR rows starting at i.
template <int MR, int NR>
void RunInt8Rows(const TileContext& t, const Int8Activations& a, int64_t i, int64_t n0,
                 int64_t n1) {
  int64_t j = n0;
  for (; j + NR <= n1; j += NR) RunInt8Tile<MR, NR>(t, a, i, j);
  for (; j < n1; ++j) RunInt8Tile<MR, 1>(t, a, i, j);
}
#endif

void Int8Task(const TileContext& t, const Int8Activations& a, int64_t m0, int64_t m1,
              int64_t n0, int64_t n1) {
#if BITNET_CPU_X86
  if (t.simd) {
    int64_t i = m0;
    for (; i + 4 <= m1; i += 4) RunInt8Rows<4, 2>(t, a, i, n0, n1);
    switch (m1 - i) {
      case 3: RunInt8Rows<3, 2>(t, a, i, n0, n1); break;
      case 2: RunInt8Rows<2, 4>(t, a, i, n0, n1); break;
      case 1: RunInt8Rows<1, 4>(t, a, i, n0, n1); break;
      default: break;
    }
    return;
  }
#endif
  for (int64_t i = m0; i < m1; ++i) {
    for (int64_t j = n0; j < n1; ++j) {
      StoreInt8(t, a, i, j,
                Int8DotScalar(a.xq.data() + i * a.stride, t.weights->row_codes(j),
                              t.weights->groups()));
    }
  }
}

void StoreFloat(const TileContext& t, int64_t i, int64_t j, double acc) {
  const int64_t n = t.weights->rows();
  const double bias = t.args->bias != nullptr ? t.args->bias[j] : 0.0;
  const double v = acc * static_cast<double>(t.weights->scale(j)) + bias;
  t.args->y[i * n + j] = ApplyActivation(t.args->activation, static_cast<float>(v));
}

#if BITNET_CPU_X86
// Adds chunk [c0, c0 + len) of rows i.. i+MR-1 x all `count` decoded columns
// into dacc (indexed from row m0).
template <int MR, int NR>
void RunFloatChunk(const float* xp, int64_t stride, const float* wf, int64_t i,
                   int64_t m0, int64_t count, int64_t c0, int64_t len,
                   double (*dacc)[kDecodeCols]) {
  int64_t q = 0;
  for (; q + NR <= count; q += NR) {
    double out[MR][NR];
    FloatChunkAvx2<MR, NR>(xp + i * stride + c0, stride, wf + q * stride + c0, len, out);
    for (int r = 0; r < MR; ++r)
      for (int s = 0; s < NR; ++s) dacc[i - m0 + r][q + s] += out[r][s];
  }
  for (; q < count; ++q) {
    double out[MR][1];
    FloatChunkAvx2<MR, 1>(xp + i * stride + c0, stride, wf + q * stride + c0, len, out);
    for (int r = 0; r < MR; ++r) dacc[i - m0 + r][q] += out[r][0];
  }
}
#endif

void FloatTask(const TileContext& t, const float* xp, int64_t stride, float* scratch,
               int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
#if BITNET_CPU_X86
  if (t.simd) {
    // Loop order: 8 decoded columns, then 512-column chunks, then 4-row
    // blocks, so each 4x2 tile's operands (8 KiB of x, 4 KiB of weights) sit
    // in L1. The float partial of each chunk goes into a double per output,
    // chunks in ascending order.
    double dacc[kTileRowsFloat][kDecodeCols];
    for (int64_t j0 = n0; j0 < n1; j0 += kDecodeCols) {
      const int64_t count = std::min(kDecodeCols, n1 - j0);
      DecodeFloatAvx2(*t.weights, j0, count, stride, scratch);
      for (int64_t r = 0; r < m1 - m0; ++r)
        for (int64_t q = 0; q < kDecodeCols; ++q) dacc[r][q] = 0.0;
      // Up to the 128-padded width only; the stride's extra pad is not data.
      const int64_t cols = t.weights->groups() * kGroupCols;
      for (int64_t c0 = 0; c0 < cols; c0 += kFloatChunkCols) {
        const int64_t len = std::min(kFloatChunkCols, cols - c0);
        int64_t i = m0;
        for (; i + 4 <= m1; i += 4) RunFloatChunk<4, 3>(xp, stride, scratch, i, m0, count, c0, len, dacc);
        switch (m1 - i) {
          case 3: RunFloatChunk<3, 2>(xp, stride, scratch, i, m0, count, c0, len, dacc); break;
          case 2: RunFloatChunk<2, 4>(xp, stride, scratch, i, m0, count, c0, len, dacc); break;
          case 1: RunFloatChunk<1, 4>(xp, stride, scratch, i, m0, count, c0, len, dacc); break;
          default: break;
        }
      }
      for (int64_t r = 0; r < m1 - m0; ++r)
        for (int64_t q = 0; q < count; ++q) StoreFloat(t, m0 + r, j0 + q, dacc[r][q]);
    }
    return;
  }
#endif
  const int64_t k = t.weights->cols();
  for (int64_t i = m0; i < m1; ++i) {
    for (int64_t j = n0; j < n1; ++j) {
      StoreFloat(t, i, j, FloatDotScalar(t.args->x + i * k, k, t.weights->row_codes(j)));
    }
  }
}

}  // namespace

bool CpuHasAvx2() {
#if BITNET_CPU_X86
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
#else
  return false;
#endif
}

absl::StatusOr<CpuTernaryWeights> CpuTernaryWeights::Prepare(
    const PackedTernaryView& packed) {
  if (absl::Status s = ValidatePacked(packed); !s.ok()) return s;
  CpuTernaryWeights w;
  w.rows_ = packed.rows;
  w.cols_ = packed.cols;
  w.granularity_ = packed.granularity;
  w.groups_ = (packed.cols + kGroupCols - 1) / kGroupCols;
  // 0x55: code 1 (zero) in all four slots, which is what padding must hold.
  w.codes_.assign(w.rows_ * w.groups_ * kGroupBytes, 0x55);
  w.scales_.resize(w.rows_);
  const int64_t wpr = WordsPerRow(packed.cols);
  for (int64_t r = 0; r < w.rows_; ++r) {
    w.scales_[r] = packed.ScaleForRow(r);
    uint8_t* dst = w.codes_.data() + r * w.groups_ * kGroupBytes;
    for (int64_t word = 0; word < wpr; ++word) {
      const uint32_t bits = static_cast<uint32_t>(packed.words[r * wpr + word]);
      for (int64_t e = 0; e < kCodesPerWord; ++e) {
        const int64_t c = word * kCodesPerWord + e;
        if (c >= packed.cols) break;
        const int64_t within = c % kGroupCols;
        const int shift = static_cast<int>(2 * (within / 32));
        uint8_t& byte = dst[(c / kGroupCols) * kGroupBytes + within % 32];
        byte = static_cast<uint8_t>((byte & ~(3u << shift)) | (((bits >> (2 * e)) & 3u) << shift));
      }
    }
  }
  return w;
}

absl::Status CpuTernaryGemm(const TernaryGemmArgs& args,
                            const CpuTernaryWeights& weights,
                            const CpuGemmOptions& options) {
  // The prepared weights replace args.weight's buffers; check args with
  // placeholders so the shape, x, y and enums are still validated.
  TernaryGemmArgs checked = args;
  static const int32_t kDummyWord = 0;
  static const float kDummyScale = 1.0f;
  checked.weight.words = &kDummyWord;
  checked.weight.scales = &kDummyScale;
  checked.weight.granularity = weights.granularity();
  if (absl::Status s = CheckTernaryGemmArgs(checked); !s.ok()) return s;
  if (args.weight.rows != weights.rows() || args.weight.cols != weights.cols()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "args.weight is [%d, %d] but the prepared weights are [%d, %d]",
        args.weight.rows, args.weight.cols, weights.rows(), weights.cols()));
  }
  const int64_t m = args.m;
  if (m == 0) return absl::OkStatus();
  const int64_t n = weights.rows();
  const int64_t k = weights.cols();
  const int threads = ResolveThreads(options.num_threads);
  const TileContext ctx{&args, &weights, options.allow_simd && CpuHasAvx2()};
  const int64_t padded_cols = weights.groups() * kGroupCols;
  const int64_t tile_rows =
      args.act_quant == ActivationQuant::kInt8 ? kTileRows : kTileRowsFloat;
  const int64_t row_tiles = (m + tile_rows - 1) / tile_rows;
  const int64_t col_tiles = (n + kTileCols - 1) / kTileCols;
  auto tile_bounds = [&](int64_t task, int64_t* m0, int64_t* m1, int64_t* n0,
                         int64_t* n1) {
    // Row tiles vary fastest so consecutive tasks share a weight panel.
    const int64_t rt = task % row_tiles, ct = task / row_tiles;
    *m0 = rt * tile_rows;
    *m1 = std::min(m, *m0 + tile_rows);
    *n0 = ct * kTileCols;
    *n1 = std::min(n, *n0 + kTileCols);
  };
  // Quantizing (or padding) x is split over rows only when it is big enough
  // to pay for starting threads.
  const int prep_threads = m * k >= (int64_t{1} << 18) ? threads : 1;

  if (args.act_quant == ActivationQuant::kInt8) {
    Int8Activations a;
    a.stride = padded_cols + kStridePadBytes;
    a.xq.resize(m * a.stride);
    a.row_scale.resize(m);
    a.row_sum.resize(m);
    ParallelFor(m, prep_threads, [&](int64_t i, int) {
#if BITNET_CPU_X86
      if (ctx.simd) {
        QuantizeRowAvx2(args.x + i * k, k, a.stride, a.xq.data() + i * a.stride,
                        &a.row_scale[i], &a.row_sum[i]);
        return;
      }
#endif
      QuantizeRowScalar(args.x + i * k, k, a.stride, a.xq.data() + i * a.stride,
                        &a.row_scale[i], &a.row_sum[i]);
    });
    ParallelFor(row_tiles * col_tiles, threads, [&](int64_t task, int) {
      int64_t m0, m1, n0, n1;
      tile_bounds(task, &m0, &m1, &n0, &n1);
      Int8Task(ctx, a, m0, m1, n0, n1);
    });
    return absl::OkStatus();
  }

  // x and the decoded weights share one padded stride (in floats).
  const int64_t stride = padded_cols + kStridePadBytes / static_cast<int64_t>(sizeof(float));
  std::vector<float> xp;
  std::vector<std::vector<float>> scratch(threads);
  if (ctx.simd) {
    xp.assign(m * stride, 0.0f);
    ParallelFor(m, prep_threads, [&](int64_t i, int) {
      std::memcpy(xp.data() + i * stride, args.x + i * k, k * sizeof(float));
    });
  }
  ParallelFor(row_tiles * col_tiles, threads, [&](int64_t task, int worker) {
    int64_t m0, m1, n0, n1;
    tile_bounds(task, &m0, &m1, &n0, &n1);
    std::vector<float>& s = scratch[worker];
    if (ctx.simd && s.empty()) s.resize(kDecodeCols * stride);
    FloatTask(ctx, xp.data(), stride, s.data(), m0, m1, n0, n1);
  });
  return absl::OkStatus();
}

absl::Status CpuTernaryGemm(const TernaryGemmArgs& args, int num_threads) {
  if (absl::Status s = CheckTernaryGemmArgs(args); !s.ok()) return s;
  absl::StatusOr<CpuTernaryWeights> weights = CpuTernaryWeights::Prepare(args.weight);
  if (!weights.ok()) return weights.status();
  CpuGemmOptions options;
  options.num_threads = num_threads;
  return CpuTernaryGemm(args, *weights, options);
}

}  // namespace bitnet

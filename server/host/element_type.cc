#include "server/host/element_type.h"

#include "server/host/half.h"

#include <algorithm>
#include <bit>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define BITNET_HOST_X86 1
#endif

namespace bitnet {
namespace {

static_assert(std::endian::native == std::endian::little,
              "row buffers are little-endian like the wire format");

// Scalar binary16 <-> binary32: server/host/half.h, the one definition of
// the rounding rules (the fallback below and the tests' oracle).
void HalfToFloatScalar(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = HalfToFloat(src[i]);
}

void FloatToHalfScalar(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = FloatToHalf(src[i]);
}

// bfloat16: plain integer loops the compiler vectorizes.
void BFloat16ToFloat(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    dst[i] = std::bit_cast<float>(static_cast<uint32_t>(src[i]) << 16);
  }
}

void FloatToBFloat16(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t f = std::bit_cast<uint32_t>(src[i]);
    const bool nan = (f & 0x7fffffffu) > 0x7f800000u;
    const uint32_t lsb = (f >> 16) & 1u;
    dst[i] = nan ? static_cast<uint16_t>((f >> 16) | 0x40u)
                 : static_cast<uint16_t>((f + 0x7fffu + lsb) >> 16);
  }
}

#ifdef BITNET_HOST_X86
__attribute__((target("avx,f16c"))) void HalfToFloatF16c(const uint16_t* src,
                                                          float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  HalfToFloatScalar(src + i, dst + i, n - i);
}

__attribute__((target("avx,f16c"))) void FloatToHalfF16c(const float* src,
                                                          uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
  }
  FloatToHalfScalar(src + i, dst + i, n - i);
}

// CPUID leaf 1 ECX: OSXSAVE (27), AVX (28), F16C (29); and the OS must save
// the YMM registers (XCR0 bits 1 and 2). Spelled out: clang 14's
// __builtin_cpu_supports does not know "f16c".
bool DetectF16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(1, &eax, &ebx, &ecx, &edx) == 0) return false;
  constexpr unsigned kNeeded = (1u << 27) | (1u << 28) | (1u << 29);
  if ((ecx & kNeeded) != kNeeded) return false;
  unsigned xcr0_lo = 0, xcr0_hi = 0;
  __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  return (xcr0_lo & 6u) == 6u;
}
#else
bool DetectF16c() { return false; }
#endif

const bool kHasF16c = DetectF16c();

void Convert(const void* src, ElementType from, void* dst, ElementType to,
             int64_t count, bool simd) {
  if (count <= 0) return;
  if (from == to) {
    std::memcpy(dst, src, static_cast<size_t>(count) * ElementBytes(from));
    return;
  }
  const auto* s16 = static_cast<const uint16_t*>(src);
  const auto* s32 = static_cast<const float*>(src);
  auto* d16 = static_cast<uint16_t*>(dst);
  auto* d32 = static_cast<float*>(dst);
  if (to == ElementType::kF32) {
    if (from == ElementType::kBF16) {
      BFloat16ToFloat(s16, d32, count);
#ifdef BITNET_HOST_X86
    } else if (simd) {
      HalfToFloatF16c(s16, d32, count);
#endif
    } else {
      HalfToFloatScalar(s16, d32, count);
    }
    return;
  }
  if (from == ElementType::kF32) {
    if (to == ElementType::kBF16) {
      FloatToBFloat16(s32, d16, count);
#ifdef BITNET_HOST_X86
    } else if (simd) {
      FloatToHalfF16c(s32, d16, count);
#endif
    } else {
      FloatToHalfScalar(s32, d16, count);
    }
    return;
  }
  // fp16 <-> bf16: through fp32, a block at a time.
  float block[1024];
  for (int64_t begin = 0; begin < count; begin += 1024) {
    const int64_t n = std::min<int64_t>(1024, count - begin);
    Convert(s16 + begin, from, block, ElementType::kF32, n, simd);
    Convert(block, ElementType::kF32, d16 + begin, to, n, simd);
  }
}

// Exponent all ones = inf or NaN. The OR-reduction over a block vectorizes;
// the block with a hit is scanned again for the index.
template <typename U, U kMask>
int64_t FindAllOnesExponent(const U* p, int64_t n) {
  constexpr int64_t kBlock = 4096;
  for (int64_t base = 0; base < n; base += kBlock) {
    const int64_t end = std::min(n, base + kBlock);
    unsigned bad = 0;
    for (int64_t i = base; i < end; ++i) bad |= (p[i] & kMask) == kMask;
    if (bad == 0) continue;
    for (int64_t i = base; i < end; ++i) {
      if ((p[i] & kMask) == kMask) return i;
    }
  }
  return -1;
}

}  // namespace

std::string_view ElementTypeName(ElementType type) {
  switch (type) {
    case ElementType::kF32: return "f32";
    case ElementType::kF16: return "f16";
    case ElementType::kBF16: return "bf16";
  }
  return "?";
}

void ConvertElements(const void* src, ElementType from, void* dst,
                     ElementType to, int64_t count) {
  Convert(src, from, dst, to, count, kHasF16c);
}

void ConvertElementsScalar(const void* src, ElementType from, void* dst,
                           ElementType to, int64_t count) {
  Convert(src, from, dst, to, count, false);
}

void WidenToF32InPlace(void* buffer, ElementType from, int64_t count) {
  if (from == ElementType::kF32 || count <= 0) return;
  // Back to front, a block at a time through a copy: block b's fp32 output
  // starts at byte 4 * begin >= 2 * begin, past the sources of every block
  // still to do.
  auto* src = static_cast<uint16_t*>(buffer);
  auto* dst = static_cast<float*>(buffer);
  uint16_t block[2048];
  for (int64_t end = count; end > 0;) {
    const int64_t begin = std::max<int64_t>(0, end - 2048);
    std::memcpy(block, src + begin, static_cast<size_t>(end - begin) * 2);
    ConvertElements(block, from, dst + begin, ElementType::kF32, end - begin);
    end = begin;
  }
}

int64_t FindNonFinite(const void* data, ElementType type, int64_t count) {
  switch (type) {
    case ElementType::kF32:
      return FindAllOnesExponent<uint32_t, 0x7f800000u>(
          static_cast<const uint32_t*>(data), count);
    case ElementType::kF16:
      return FindAllOnesExponent<uint16_t, 0x7c00u>(
          static_cast<const uint16_t*>(data), count);
    case ElementType::kBF16:
      return FindAllOnesExponent<uint16_t, 0x7f80u>(
          static_cast<const uint16_t*>(data), count);
  }
  return -1;
}

bool HostHasF16c() { return kHasF16c; }

}  // namespace bitnet

// Internal device helpers shared by the GEMM kernels: async copies, ldmatrix,
// the ternary decoders (execution layout -> tensor-core fragments in
// registers), split-K reduction and the fused epilogue.
//
// Execution layouts (built by RepackTernaryForCuda{Fp,Int8}, ternary_repack.cc):
// the matrix is cut into tiles of 16 rows x 128 columns; a tile is 32 lanes x
// 16 bytes, lane = 4 * g + t (g = lane / 4, t = lane % 4) as in the PTX
// fragment tables. A lane's 16 bytes are exactly the A-operand fragments it
// feeds to the tensor cores for that tile, so one 16-byte load per lane per
// tile is all the weight traffic, with no shuffles and no decoded weights in
// shared memory.
//  * fp layout (mma m16n8k16 / wgmma k16; 8 k-steps of 16 per tile): word w
//    holds steps 2w and 2w+1. Register p of step s (p = 0..3: rows g, g+8,
//    g, g+8; columns 2t, 2t+8) is "pair" j = 4 * (s & 1) + p: its low half
//    (even column) is code q+1 at bits 2j, its high half at bits 16 + 2j.
//    (w & (3 << 2j) * 0x10001) | 0x64006400 is then the fp16 pair
//    (1024 + c * 4^j) and one HFMA2 gives c - 1 = q, for j <= 4; pairs 5..7
//    come from w >> 10. bf16 uses 0x4300 (128.0) and pairs 0..2 per shift.
//  * int8 layout (mma m16n8k32 / wgmma k32; 4 k-steps of 32 per tile): word s
//    is step s; register p (rows g, g+8, g, g+8; columns 4t.., 16+4t..) holds
//    its 4 codes in nibbles: p=0 at bits 4i (i = byte), p=1 at 4i+2, p=2 at
//    16+4i, p=3 at 18+4i. Codes here are e = 0 for +1, 1 for -1, 2 for 0, so
//    PRMT(0x0000FF01, 0x000000FF, w & 0x3333) yields the four int8 of p=0 and
//    the same with mask 0xCCCC (nibble = 4e: byte 0, byte 4 or sign-of-byte-0)
//    those of p=1: one LOP3 + one PRMT per four weights.
#ifndef BITNET_KERNELS_CUDA_TERNARY_DEVICE_CUH_
#define BITNET_KERNELS_CUDA_TERNARY_DEVICE_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/int8_numerics.cuh"
#include "kernels/cuda/ternary_launch.h"

namespace bitnet::cuda_internal {

// Compile-time loop: f(std::integral_constant<int, I>) for I in [I0, N).
template <int I, int N, typename F>
__device__ __forceinline__ void StaticFor(F&& f) {
  if constexpr (I < N) {
    f(std::integral_constant<int, I>{});
    StaticFor<I + 1, N>(f);
  }
}

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global->shared copy; zero-fills when !pred (src must still be a
// valid address).
__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src, bool pred) {
  const int bytes = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(bytes));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
// CpAsyncWait<pending> for a count known only after unrolling (0..7; more
// waits for 7).
__device__ __forceinline__ void CpAsyncWaitPending(int pending) {
  switch (pending) {
    case 0: CpAsyncWait<0>(); break;
    case 1: CpAsyncWait<1>(); break;
    case 2: CpAsyncWait<2>(); break;
    case 3: CpAsyncWait<3>(); break;
    case 4: CpAsyncWait<4>(); break;
    case 5: CpAsyncWait<5>(); break;
    case 6: CpAsyncWait<6>(); break;
    default: CpAsyncWait<7>(); break;
  }
}

__device__ __forceinline__ uint4 LdShared128(uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(addr));
  return v;
}

__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void LdMatrixX2(uint32_t (&r)[2], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(addr));
}

// ---------------------------------------------------------------------------
// Decoders. Constants are the fp16/bf16 bit patterns of 4^-j and
// -(magic * 4^-j + 1), replicated into both halves.

__device__ __forceinline__ uint32_t Lop3AndOr(uint32_t a, uint32_t mask, uint32_t magic) {
  uint32_t r;
  // (a & b) | c  ->  immLut = (0xF0 & 0xCC) | 0xAA = 0xEA
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(r) : "r"(a), "r"(mask), "r"(magic));
  return r;
}

__device__ __forceinline__ uint32_t Hfma2F16(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t r;
  asm("fma.rn.f16x2 %0, %1, %2, %3;\n" : "=r"(r) : "r"(a), "r"(b), "r"(c));
  return r;
}
__device__ __forceinline__ uint32_t Hfma2BF16(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t r;
  asm("fma.rn.bf16x2 %0, %1, %2, %3;\n" : "=r"(r) : "r"(a), "r"(b), "r"(c));
  return r;
}

template <int J>
__device__ __forceinline__ uint32_t DecodePairF16(uint32_t w) {
  static_assert(J >= 0 && J <= 4, "fp16 mantissa holds pairs 0..4");
  constexpr uint32_t kMask = (3u << (2 * J)) * 0x10001u;
  constexpr uint32_t kScale[5] = {0x3c003c00u, 0x34003400u, 0x2c002c00u, 0x24002400u,
                                  0x1c001c00u};
  constexpr uint32_t kOffset[5] = {0xe401e401u, 0xdc04dc04u, 0xd410d410u, 0xcc40cc40u,
                                   0xc500c500u};
  return Hfma2F16(Lop3AndOr(w, kMask, 0x64006400u), kScale[J], kOffset[J]);
}
template <int J>
__device__ __forceinline__ uint32_t DecodePairBF16(uint32_t w) {
  static_assert(J >= 0 && J <= 2, "bf16 mantissa holds pairs 0..2");
  constexpr uint32_t kMask = (3u << (2 * J)) * 0x10001u;
  constexpr uint32_t kScale[3] = {0x3f803f80u, 0x3e803e80u, 0x3d803d80u};
  constexpr uint32_t kOffset[3] = {0xc301c301u, 0xc204c204u, 0xc110c110u};
  return Hfma2BF16(Lop3AndOr(w, kMask, 0x43004300u), kScale[J], kOffset[J]);
}

// A fragment (4 registers) of k-step `S` (0..7) of the fp layout.
template <MmaType kType, int S>
__device__ __forceinline__ void DecodeFpStep(const uint4& v, uint32_t (&a)[4]) {
  const uint32_t w = (S / 2 == 0) ? v.x : (S / 2 == 1) ? v.y : (S / 2 == 2) ? v.z : v.w;
  if constexpr (kType == MmaType::kF16) {
    if constexpr ((S & 1) == 0) {
      a[0] = DecodePairF16<0>(w);
      a[1] = DecodePairF16<1>(w);
      a[2] = DecodePairF16<2>(w);
      a[3] = DecodePairF16<3>(w);
    } else {
      a[0] = DecodePairF16<4>(w);
      const uint32_t w10 = w >> 10;
      a[1] = DecodePairF16<0>(w10);
      a[2] = DecodePairF16<1>(w10);
      a[3] = DecodePairF16<2>(w10);
    }
  } else {
    // pairs 0..2 direct, 3..5 from w >> 6, 6..7 from w >> 12.
    if constexpr ((S & 1) == 0) {
      a[0] = DecodePairBF16<0>(w);
      a[1] = DecodePairBF16<1>(w);
      a[2] = DecodePairBF16<2>(w);
      a[3] = DecodePairBF16<0>(w >> 6);
    } else {
      const uint32_t w6 = w >> 6;
      a[0] = DecodePairBF16<1>(w6);
      a[1] = DecodePairBF16<2>(w6);
      const uint32_t w12 = w >> 12;
      a[2] = DecodePairBF16<0>(w12);
      a[3] = DecodePairBF16<1>(w12);
    }
  }
}

__device__ __forceinline__ uint32_t Prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
}

// A fragment (4 registers of 4 int8) of k-step `S` (0..3) of the int8 layout.
template <int S>
__device__ __forceinline__ void DecodeInt8Step(const uint4& v, uint32_t (&a)[4]) {
  const uint32_t w = (S == 0) ? v.x : (S == 1) ? v.y : (S == 2) ? v.z : v.w;
  const uint32_t hi = w >> 16;
  a[0] = Prmt(0x0000FF01u, 0x000000FFu, w & 0x3333u);
  a[1] = Prmt(0x0000FF01u, 0x000000FFu, w & 0xCCCCu);
  a[2] = Prmt(0x0000FF01u, 0x000000FFu, hi & 0x3333u);
  a[3] = Prmt(0x0000FF01u, 0x000000FFu, hi & 0xCCCCu);
}

// A fragment of k-step `S` in kType's execution layout (int8 or fp).
template <MmaType kType, int S>
__device__ __forceinline__ void DecodeStep(const uint4& v, uint32_t (&a)[4]) {
  if constexpr (kType == MmaType::kS8) {
    DecodeInt8Step<S>(v, a);
  } else {
    DecodeFpStep<kType, S>(v, a);
  }
}

// ---------------------------------------------------------------------------
// mma.sync wrappers.

template <MmaType kType>
__device__ __forceinline__ void Mma(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (kType == MmaType::kF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}
__device__ __forceinline__ void Mma(int (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <MmaType kType>
using AccType = typename std::conditional<kType == MmaType::kS8, int, float>::type;

// ---------------------------------------------------------------------------
// Per-thread cp.async plans. Computing addresses per chunk per k-tile (index
// divisions, 64-bit multiplies) cost ~400 instructions per warp per tile,
// three times the tensor work: the SASS showed it. With kThreads a multiple
// of the chunks per row, a thread's chunk column is fixed and its rows step
// by kThreads / kChunks, so every address is a base plus constant strides and
// a k-tile offset, computed once.

// Activation tile: kRows batch rows x kChunks 16-byte chunks per k-tile.
// DstOf(r, c) is the shared-memory byte offset of chunk c of row r.
template <int kRows, int kChunks, int kThreads, int kElemBytes>
struct ActCopyPlan {
  static constexpr int kRowsPerStep = kThreads / kChunks;
  static constexpr int kSteps = (kRows + kRowsPerStep - 1) / kRowsPerStep;
  static_assert(kThreads % kChunks == 0, "a thread's chunk column must be fixed");
  static_assert(kSteps <= 32, "row mask is 32 bits");
  const char* base = nullptr;  // x (source for zero-filled chunks)
  const char* src = nullptr;   // (row r0, chunk c) at k-tile 0
  int64_t src_step = 0;        // bytes between a thread's successive rows
  uint32_t dst = 0;            // shared offset of (r0, c) within a stage
  uint32_t dst_step = 0;
  uint32_t row_ok = 0;         // bit s: row r0 + s * kRowsPerStep is < m
  int r0 = 0;
  int k_elem = 0;              // first element of the thread's chunk in a k-tile

  template <typename DstOf>
  __device__ __forceinline__ ActCopyPlan(const GemmParams& p, int block_b0, int tid, DstOf dst_of) {
    const int c = tid % kChunks;
    r0 = tid / kChunks;
    k_elem = c * (16 / kElemBytes);
    base = static_cast<const char*>(p.x);
    src = base + (static_cast<int64_t>(block_b0 + r0) * p.ldx + k_elem) * kElemBytes;
    src_step = static_cast<int64_t>(kRowsPerStep) * p.ldx * kElemBytes;
    dst = dst_of(r0, c);
    dst_step = kSteps > 1 ? dst_of(r0 + kRowsPerStep, c) - dst : 0;
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      const int r = r0 + s * kRowsPerStep;
      if (r < kRows && block_b0 + r < p.m) row_ok |= 1u << s;
    }
  }

  __device__ __forceinline__ void Load(uint32_t stage, int kt, int64_t x_k_limit) const {
    const bool k_ok = static_cast<int64_t>(kt) * 128 + k_elem < x_k_limit;
    const char* s0 = src + static_cast<int64_t>(kt) * (128 * kElemBytes);
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      if (kRows % kRowsPerStep == 0 || r0 + s * kRowsPerStep < kRows) {
        const bool pred = k_ok && ((row_ok >> s) & 1u);
        CpAsync16(stage + dst + s * dst_step, pred ? s0 + s * src_step : base, pred);
      }
    }
  }
};

// Packed weight tile: kBW rows = kBW / 16 groups of 512 bytes per k-tile,
// stored contiguously in shared memory.
template <int kBW, int kThreads>
struct WeightCopyPlan {
  static constexpr int kChunks = kBW * 2;  // 16-byte chunks per stage
  static constexpr int kSteps = (kChunks + kThreads - 1) / kThreads;
  const uint4* src[kSteps];

  __device__ __forceinline__ WeightCopyPlan(const GemmParams& p, int block_w0, int tid) {
    const uint4* w = p.w + static_cast<int64_t>(block_w0 / 16) * p.k_tiles * 32;
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      const int idx = tid + s * kThreads;
      src[s] = w + static_cast<int64_t>(idx >> 5) * p.k_tiles * 32 + (idx & 31);
    }
  }

  __device__ __forceinline__ void Load(uint32_t stage, int kt, int tid) const {
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      const int idx = tid + s * kThreads;
      if (kChunks % kThreads == 0 || idx < kChunks) {
        CpAsync16(stage + idx * 16, src[s] + kt * 32, true);
      }
    }
  }
};

// Barrier over the threads that compute: the whole block (kNamedThreads ==
// 0), or the first kNamedThreads threads on named barrier 1 (warp-specialized
// kernels, whose producer warp does not take part in split-K or epilogue).
template <int kNamedThreads>
__device__ __forceinline__ void ComputeSync() {
  if constexpr (kNamedThreads == 0) {
    __syncthreads();
  } else {
    asm volatile("bar.sync 1, %0;\n" ::"n"(kNamedThreads) : "memory");
  }
}

// ---------------------------------------------------------------------------
// Split-K: every split block writes its raw accumulators (thread-major, so
// the writes coalesce); the last block of a tile to arrive sums all splits in
// split order (deterministic) and runs the epilogue. Counters are reset to 0
// by that block, so the workspace stays ready for the next launch.
// Returns false for blocks that must exit without an epilogue.
template <typename T, int kRegs, int kThreads, int kNamedThreads = 0>
__device__ __forceinline__ bool SplitKReduce(T (&acc)[kRegs], const GemmParams& p, int tile) {
  __shared__ int s_last;
  const int z = blockIdx.z;
  const int tid = threadIdx.x;
  uint32_t* base = p.partials + static_cast<int64_t>(tile) * p.splits * kRegs * kThreads;
  {
    uint32_t* mine = base + static_cast<int64_t>(z) * kRegs * kThreads;
#pragma unroll
    for (int r = 0; r < kRegs; ++r) {
      uint32_t bits;
      if constexpr (std::is_same<T, float>::value) {
        bits = __float_as_uint(acc[r]);
      } else {
        bits = static_cast<uint32_t>(acc[r]);
      }
      __stcg(mine + r * kThreads + tid, bits);
    }
  }
  __threadfence();
  ComputeSync<kNamedThreads>();
  if (tid == 0) {
    const int prev = atomicAdd(p.counters + tile, 1);
    s_last = (prev == p.splits - 1) ? 1 : 0;
  }
  ComputeSync<kNamedThreads>();
  if (!s_last) return false;
  __threadfence();
  if (tid == 0) p.counters[tile] = 0;
  // Sum every split's partial from memory, in split order, so the result does
  // not depend on which block arrived last (own partial included: reading it
  // back costs less than keeping a second copy of the accumulators live).
#pragma unroll
  for (int r = 0; r < kRegs; ++r) acc[r] = T(0);
  for (int s = 0; s < p.splits; ++s) {
    const uint32_t* part = base + static_cast<int64_t>(s) * kRegs * kThreads;
#pragma unroll
    for (int r = 0; r < kRegs; ++r) {
      const uint32_t bits = __ldcg(part + r * kThreads + tid);
      if constexpr (std::is_same<T, float>::value) {
        acc[r] = acc[r] + __uint_as_float(bits);
      } else {
        acc[r] = acc[r] + static_cast<T>(bits);
      }
    }
  }
  return true;
}

// ---------------------------------------------------------------------------
// Epilogue.

__device__ __forceinline__ float ApplyAct(Act act, float v) {
  switch (act) {
    case Act::kRelu:
      return v < 0.0f ? 0.0f : v;
    case Act::kGelu:
      return v * 0.5f * (1.0f + erff(v * 0.70710678118654752440f));
    case Act::kSilu:
      return v / (1.0f + expf(-v));
    default:
      return v;
  }
}

// One output value of the gemv kernels: accumulator -> scaled, biased,
// activated float, with its operands already loaded (the gemv kernels fetch
// them while the weights stream in, so the epilogue waits for no memory).
// The activation and (int8) kSmallAcc are template parameters
// (WithEpilogueKind), so a thread's unrolled outputs are straight-line code.
template <typename T, Act kAct, bool kSmallAcc>
__device__ __forceinline__ float EpilogueValueFrom(T acc, float ws, float bias, float rs) {
  float v;
  if constexpr (std::is_same<T, int>::value) {
    // Int8Dequantize (kernels/activation.h), same float operations and order:
    // float(acc) * weight_scale / row_scale + bias, no contraction.
    v = __fmul_rn(kSmallAcc ? SmallAccToFloat(acc) : static_cast<float>(acc), ws);
    v = __fadd_rn(__fdiv_rn(v, rs), bias);
  } else {
    // acc * ws (* row scale: an exact power of two, so * 1 is the same value)
    // + bias, rounded step by step as in EpilogueRows.
    v = __fadd_rn(__fmul_rn(__fmul_rn(acc, ws), rs), bias);
  }
  return ApplyAct(kAct, v);
}

template <OutType kOut>
__device__ __forceinline__ void StoreOutput(void* y, int64_t off, float v) {
  if constexpr (kOut == OutType::kF32) {
    static_cast<float*>(y)[off] = v;
  } else if constexpr (kOut == OutType::kF16) {
    static_cast<__half*>(y)[off] = __float2half_rn(v);
  } else if constexpr (kOut == OutType::kBF16) {
    static_cast<__nv_bfloat16*>(y)[off] = __float2bfloat16_rn(v);
  } else {
    static_cast<int*>(y)[off] = __float_as_int(v);
  }
}

// Calls f(act, out_type, small_acc), each a std::integral_constant: the
// launch's activation and output type, and (int8) whether its accumulators
// fit SmallAccToFloat. f's body is compiled once per combination and only
// the launch's one runs; the raw int32 output (kS32) comes with kIdentity.
// Both epilogues dispatch through it: the gemv's (which used to switch on
// activation and output type per output inside its unrolled output loop)
// and the block tiles' EpilogueRows (the instruction-fetch cost the comment
// on Epilogue below describes).
template <typename T, typename F>
__device__ __forceinline__ void WithEpilogueKind(const GemmParams& p, F&& f) {
  using std::integral_constant;
  auto by_small = [&](auto act_c, auto out_c) {
    if constexpr (std::is_same<T, int>::value) {
      if (p.k_tiles <= kSmallAccMaxKTiles) {
        f(act_c, out_c, std::true_type{});
        return;
      }
    }
    f(act_c, out_c, std::false_type{});
  };
  auto by_act = [&](auto out_c) {
    switch (p.act) {
      case Act::kRelu:
        by_small(integral_constant<Act, Act::kRelu>{}, out_c);
        break;
      case Act::kGelu:
        by_small(integral_constant<Act, Act::kGelu>{}, out_c);
        break;
      case Act::kSilu:
        by_small(integral_constant<Act, Act::kSilu>{}, out_c);
        break;
      default:
        by_small(integral_constant<Act, Act::kIdentity>{}, out_c);
        break;
    }
  };
  switch (p.y_type) {
    case OutType::kF16:
      by_act(integral_constant<OutType, OutType::kF16>{});
      break;
    case OutType::kBF16:
      by_act(integral_constant<OutType, OutType::kBF16>{});
      break;
    case OutType::kS32:  // int8 mode only (the planner rejects it otherwise)
      if constexpr (std::is_same<T, int>::value) {
        f(integral_constant<Act, Act::kIdentity>{}, integral_constant<OutType, OutType::kS32>{},
          std::false_type{});
      }
      break;
    default:
      by_act(integral_constant<OutType, OutType::kF32>{});
      break;
  }
}

// Epilogue of one block tile, in two compact phases. The first version ran
// the whole per-element epilogue (scales, activation switch, output-type
// switch) inside the fully unrolled fragment loop: ~18k SASS instructions
// per kernel, and ncu showed the warps stalled on instruction fetch for
// longer than the whole main loop ran. Now:
//  1. the raw accumulators go to shared memory as 32-bit words (float or s32
//     bits) in [batch_rows][weight_rows + 4] order: a short unrolled loop;
//  2. each thread owns 4 consecutive weight rows (output columns) of the
//     tile: it loads their scales and bias once, then walks the batch rows,
//     computing 4 outputs at a time with the activation and output type
//     fixed by template (one small loop per combination; only the one
//     launched is fetched) and a vector store when aligned.
// `acc` is [kGroups][kNTiles][4] in mma C-fragment order: element e of
// (group r, n-tile j) is weight row row_base(r) + g + 8 * (e >> 1) and batch
// row col_base(j) + 2t + (e & 1) (block-local).

template <typename T>
__device__ __forceinline__ uint32_t AccBits(T v) {
  if constexpr (std::is_same<T, float>::value) {
    return __float_as_uint(v);
  } else {
    return static_cast<uint32_t>(v);
  }
}

// The weight scales and bias of the 4 consecutive output columns (weight
// rows) a thread of a kBW-row block tile owns in EpilogueRows; zeros past N.
// Model constants, never written by the previous kernel, so a kernel may load
// them before its PDL wait and hold them through its main loop.
struct EpilogueColumns {
  float ws[4];
  float bias[4];
};

template <int kBW>
__device__ __forceinline__ EpilogueColumns LoadEpilogueColumns(const GemmParams& p, int block_w0) {
  const int wl = (threadIdx.x % (kBW / 4)) * 4;
  const int cols = min(4, min(kBW, p.n - block_w0) - wl);
  const int gn = block_w0 + wl;
  EpilogueColumns c;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    c.ws[i] = i < cols ? p.w_scale[gn + i] : 0.0f;
    c.bias[i] = (i < cols && p.bias != nullptr) ? p.bias[gn + i] : 0.0f;
  }
  return c;
}

// kSmallAcc (int8 only): the accumulators fit SmallAccToFloat
// (p.k_tiles <= kSmallAccMaxKTiles), so float(acc) needs no I2F.
// `preloaded`: the thread's EpilogueColumns, loaded by the caller before its
// main loop (nullptr: loaded here).
template <typename T, Act kAct, OutType kOut, int kBW, int kThreads, bool kSmallAcc = false>
__device__ __forceinline__ void EpilogueRows(const GemmParams& p, const uint32_t* tile, int block_w0,
                                          int block_b0, int n_valid, int m_valid,
                                          const EpilogueColumns* preloaded) {
  constexpr int kLd = kBW + 4;
  constexpr int kColGroups = kBW / 4;
  static_assert(kThreads % kColGroups == 0, "a thread's columns are fixed");
  constexpr int kRowStep = kThreads / kColGroups;
  const int wl = (threadIdx.x % kColGroups) * 4;
  if (wl >= n_valid) return;
  const int gn = block_w0 + wl;
  const int cols = min(4, n_valid - wl);
  float ws[4];
  float bias[4];
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    if (preloaded != nullptr) {
      ws[c] = preloaded->ws[c];
      bias[c] = preloaded->bias[c];
    } else {
      ws[c] = c < cols ? p.w_scale[gn + c] : 0.0f;
      bias[c] = (c < cols && p.bias != nullptr) ? p.bias[gn + c] : 0.0f;
    }
  }
  // int8: with small accumulators and each weight scale zero or in
  // [2^-30, 2^9), every float(acc) * weight scale is zero or in
  // [2^-30, 2^31), so a row whose scale has a reciprocal divides by the
  // straight-line DivideByRowScaleInRange: one check per row of 4 columns.
  // (A range check and branch per element made the int8 launches at
  // M >= 512 4 % slower than __fdiv_rn; this is 5-10 % faster: session 21,
  // benchmarks/NOTES-kernels.md.)
  bool cols_in_range = kSmallAcc;
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    cols_in_range =
        cols_in_range && (ws[c] == 0.0f || (InDivisionRange(ws[c]) && fabsf(ws[c]) < 512.0f));
  }
  using Out = std::conditional_t<kOut == OutType::kF16, __half,
                                 std::conditional_t<kOut == OutType::kBF16, __nv_bfloat16,
                                                    std::conditional_t<kOut == OutType::kS32, int,
                                                                       float>>>;
  Out* y = static_cast<Out*>(p.y);
  const bool vec = cols == 4 && p.ldy % 4 == 0 &&
                   reinterpret_cast<uintptr_t>(p.y) % (4 * sizeof(Out)) == 0;
  for (int bl = threadIdx.x / kColGroups; bl < m_valid; bl += kRowStep) {
    const int gm = block_b0 + bl;
    const uint4 raw = *reinterpret_cast<const uint4*>(tile + bl * kLd + wl);
    const uint32_t bits[4] = {raw.x, raw.y, raw.z, raw.w};
    Out o[4];
    if constexpr (kOut == OutType::kS32) {
#pragma unroll
      for (int c = 0; c < 4; ++c) o[c] = static_cast<int>(bits[c]);
    } else {
      // The row's scale and (int8) its RowScaleReciprocal, staged by
      // Epilogue in the row's padding words.
      const float rs = __uint_as_float(tile[bl * kLd + kBW]);
      const float rcp = std::is_same<T, int>::value ? __uint_as_float(tile[bl * kLd + kBW + 1])
                                                     : 0.0f;
      // int8: Int8Dequantize (kernels/activation.h), same float operations
      // and order: float(acc) * weight_scale / row_scale + bias, no
      // contraction; float(acc) and the division without conversion or MUFU
      // instructions where the ranges allow (int8_numerics.cuh).
      float q[4];
      if constexpr (std::is_same<T, int>::value) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int acc = static_cast<int>(bits[c]);
          q[c] = __fmul_rn(kSmallAcc ? SmallAccToFloat(acc) : static_cast<float>(acc), ws[c]);
        }
        if (cols_in_range && rcp != 0.0f) {
#pragma unroll
          for (int c = 0; c < 4; ++c) q[c] = DivideByRowScaleInRange(q[c], rs, rcp);
        } else {
#pragma unroll
          for (int c = 0; c < 4; ++c) q[c] = __fdiv_rn(q[c], rs);
        }
      }
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        float v;
        if constexpr (std::is_same<T, int>::value) {
          v = __fadd_rn(q[c], bias[c]);
        } else {
          // acc * ws (* rs when given: an exact power of two, so * 1 is the
          // same value) + bias.
          v = __fadd_rn(__fmul_rn(__fmul_rn(__uint_as_float(bits[c]), ws[c]), rs), bias[c]);
        }
        v = ApplyAct(kAct, v);
        if constexpr (kOut == OutType::kF16) {
          o[c] = __float2half_rn(v);
        } else if constexpr (kOut == OutType::kBF16) {
          o[c] = __float2bfloat16_rn(v);
        } else {
          o[c] = v;
        }
      }
    }
    Out* dst = y + static_cast<int64_t>(gm) * p.ldy + gn;
    if (vec) {
      if constexpr (sizeof(Out) == 2) {
        uint2 packed;
        __builtin_memcpy(&packed, o, 8);
        *reinterpret_cast<uint2*>(dst) = packed;
      } else {
        uint4 packed;
        __builtin_memcpy(&packed, o, 16);
        *reinterpret_cast<uint4*>(dst) = packed;
      }
    } else {
      for (int c = 0; c < cols; ++c) dst[c] = o[c];
    }
  }
}

// Epilogue, phase 1: the raw accumulators into the shared-memory tile
// [batch row][weight row] (kBW + 4 words per batch row), as 32-bit words.
template <int kBW, typename T, int kGroups, int kNTiles, typename RowBase, typename ColBase>
__device__ __forceinline__ void StageAccumulators(T (&acc)[kGroups][kNTiles][4], uint32_t* tile,
                                                  RowBase row_base, ColBase col_base) {
  constexpr int kLd = kBW + 4;  // +4 words: conflict-free fragment writes, 16-byte rows
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2;
  const int t = lane & 3;
#pragma unroll
  for (int r = 0; r < kGroups; ++r) {
#pragma unroll
    for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int wl = row_base(r) + g + 8 * (e >> 1);
        const int bl = col_base(j) + 2 * t + (e & 1);
        tile[bl * kLd + wl] = AccBits(acc[r][j][e]);
      }
    }
  }
}

// Epilogue, phase 2: the m_valid batch rows of a staged tile (tile row 0 is
// batch row row0) scaled, biased, activated and stored.
template <int kBW, int kThreads, int kNamedThreads, typename T>
__device__ __forceinline__ void EpilogueFromTile(const GemmParams& p, uint32_t* tile,
                                                 int block_w0, int row0, int m_valid,
                                                 const EpilogueColumns* preloaded = nullptr) {
  constexpr int kLd = kBW + 4;
  const int n_valid = min(kBW, p.n - block_w0);
  // Each batch row's scale goes into the row's first padding word, all rows'
  // loads in flight at once. EpilogueRows used to load it from global memory
  // once per row it walks, a chain of dependent loads (row_scale may alias y
  // for the compiler): ncu put ~15 % of ws_w128_b128's int8 stall samples at
  // N = 4096, M = 512 on the division waiting for it (session 16).
  // In int8 mode the next padding word holds the row scale's
  // RowScaleReciprocal, so the division by it costs no MUFU per output.
  for (int bl = threadIdx.x % kThreads; bl < m_valid; bl += kThreads) {
    const float rs = p.row_scale != nullptr ? p.row_scale[row0 + bl] : 1.0f;
    tile[bl * kLd + kBW] = __float_as_uint(rs);
    if constexpr (std::is_same<T, int>::value) {
      tile[bl * kLd + kBW + 1] = __float_as_uint(RowScaleReciprocal(rs));
    }
  }
  ComputeSync<kNamedThreads>();
  WithEpilogueKind<T>(p, [&](auto act_c, auto out_c, auto small_acc_c) {
    EpilogueRows<T, decltype(act_c)::value, decltype(out_c)::value, kBW, kThreads,
                 decltype(small_acc_c)::value>(p, tile, block_w0, row0, n_valid, m_valid,
                                                             preloaded);
  });
}

template <int kBW, int kBB, int kThreads, int kNamedThreads = 0, typename T, int kGroups,
          int kNTiles, typename RowBase, typename ColBase>
__device__ __forceinline__ void Epilogue(const GemmParams& p, T (&acc)[kGroups][kNTiles][4],
                                         float* smem, int block_w0, int block_b0, RowBase row_base,
                                         ColBase col_base,
                                         const EpilogueColumns* preloaded = nullptr) {
  uint32_t* tile = reinterpret_cast<uint32_t*>(smem);
  StageAccumulators<kBW>(acc, tile, row_base, col_base);
  EpilogueFromTile<kBW, kThreads, kNamedThreads, T>(p, tile, block_w0, block_b0,
                                                    min(kBB, p.m - block_b0), preloaded);
}

}  // namespace bitnet::cuda_internal

#endif  // BITNET_KERNELS_CUDA_TERNARY_DEVICE_CUH_

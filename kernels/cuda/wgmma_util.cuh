// Helpers shared by the Hopper kernels (ternary_wgmma.cu, ternary_wgmma_ws.cu):
// the shared-memory matrix descriptor of a 128-byte-swizzled K-major tile,
// the wgmma wrapper chosen by input type and batch tile, and the register
// fence that keeps A fragments alive until their wgmmas are done.
#ifndef BITNET_KERNELS_CUDA_WGMMA_UTIL_CUH_
#define BITNET_KERNELS_CUDA_WGMMA_UTIL_CUH_

#include <cstdint>

#include "kernels/cuda/ternary_device.cuh"
#include "kernels/cuda/wgmma_ops.cuh"

namespace bitnet::cuda_internal {

#ifdef BITNET_WGMMA_ENABLED
// Rows of 128 bytes, 8-row swizzle atoms of 1024 bytes (SBO), 128-byte swizzle.
__device__ __forceinline__ uint64_t MakeSw128Desc(uint32_t addr) {
  uint64_t d = 0;
  d |= static_cast<uint64_t>((addr & 0x3FFFF) >> 4);  // start address
  d |= static_cast<uint64_t>(1) << 16;                 // LBO: unused (K-major, swizzled)
  d |= static_cast<uint64_t>(1024 >> 4) << 32;         // SBO: 8 rows x 128 B
  d |= static_cast<uint64_t>(1) << 62;                 // 128-byte swizzle
  return d;
}
#endif

// The wrapper for this input type and batch tile (the tiles are listed in
// kernels/cuda/tools/gen_wgmma.py).
template <MmaType kType, int kBN>
__device__ __forceinline__ void Wgmma(AccType<kType> (&d)[kBN / 2], const uint32_t (&a)[4],
                                      uint64_t desc) {
  if constexpr (kType == MmaType::kF16) {
    WgmmaF16<kBN>(d, a, desc);
  } else if constexpr (kType == MmaType::kBF16) {
    WgmmaBF16<kBN>(d, a, desc);
  } else {
    WgmmaS8<kBN>(d, a, desc);
  }
}

// An empty asm that "reads and writes" every A register: the compiler keeps
// them live (and unmodified) until this point.
template <int kSteps>
__device__ __forceinline__ void FenceRegs(uint32_t (&a)[kSteps][4]) {
#pragma unroll
  for (int s = 0; s < kSteps; ++s)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(a[s][j])::"memory");
}

#ifdef BITNET_WGMMA_ENABLED
// One k-tile of a warpgroup's work: decode the warp's 16 packed bytes (wv)
// into the A fragments of every k-step, then issue the k-steps' wgmmas
// against the activation tile at `act` (128-byte column blocks of
// kColBlockBytes each) as one commit group. The caller waits for it and keeps
// `a` alive (FenceRegs) until it is done.
template <MmaType kType, int kBN, int kColBlockBytes, int kSteps>
__device__ __forceinline__ void DecodeAndIssueTile(const uint4& wv, uint32_t (&a)[kSteps][4],
                                                   AccType<kType> (&acc)[kBN / 2],
                                                   uint32_t act) {
  StaticFor<0, kSteps>([&](auto s_const) {
    constexpr int S = decltype(s_const)::value;
    DecodeStep<kType, S>(wv, a[S]);
  });
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
  StaticFor<0, kSteps>([&](auto s_const) {
    constexpr int S = decltype(s_const)::value;
    // k-step S covers bytes [32 S, 32 S + 32) of each batch row's k-tile.
    const uint32_t addr = act + ((32 * S) / 128) * kColBlockBytes + (32 * S) % 128;
    Wgmma<kType, kBN>(acc, a[S], MakeSw128Desc(addr));
  });
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
#endif

}  // namespace bitnet::cuda_internal

#endif  // BITNET_KERNELS_CUDA_WGMMA_UTIL_CUH_

// Hopper (sm_90a) ternary GEMM with warpgroup MMA. Two warpgroups, each owns
// 64 weight rows: its A operand is the weights, decoded from the execution
// layout straight into wgmma's register fragments (the same per-warp
// fragments as mma.sync m16n8k16 / m16n8k32, so the layout is shared with
// ternary_mma.cu). B is kBN batch rows of activations in shared memory,
// K-major with the 128-byte swizzle, read by the tensor cores through a
// matrix descriptor. A cp.async multi-stage pipeline feeds both (weights stay
// packed, 2 bits each, in shared memory).
//
// The int8 flavour (m64nNk32 s8) runs at twice the fp16 tensor rate, which is
// what large batches need to beat an fp16 GEMM by more than the weight bytes.
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/ternary_device.cuh"
#include "kernels/cuda/ternary_launch.h"
#include "kernels/cuda/wgmma_util.cuh"

namespace bitnet::cuda_internal {
namespace {

template <MmaType kType, int kBN, int kSmemBudget>
struct WgmmaTraits {
  static constexpr int kThreads = 256;  // 2 warpgroups
  static constexpr int kBW = 128;       // weight rows per block
  static constexpr int kBB = kBN;       // batch rows per block
  static constexpr int kElemBytes = kType == MmaType::kS8 ? 1 : 2;
  static constexpr int kChunks = 128 * kElemBytes / 16;  // 16-byte chunks per k-tile row
  static constexpr int kColBlocks = kElemBytes;          // 128-byte swizzle column blocks
  static constexpr int kColBlockBytes = kBN * 128;
  static constexpr int kActStageBytes = kColBlocks * kColBlockBytes;
  static constexpr int kWStageBytes = kBW * 32;
  static constexpr int kStageBytes = kActStageBytes + kWStageBytes;
  // As many stages as the budget holds (3..12): bytes in flight hide latency.
  static constexpr int kStages = kSmemBudget / kStageBytes < 3    ? 3
                                 : kSmemBudget / kStageBytes > 12 ? 12
                                                                  : kSmemBudget / kStageBytes;
  static constexpr int kSteps = kType == MmaType::kS8 ? 4 : 8;
  static constexpr int kAccRegs = kBN / 2;  // m64 x kBN over 128 threads
  static constexpr int kEpiBytes = kBB * (kBW + 4) * 4;
  static constexpr int kPipeBytes = kStages * kStageBytes;
  static constexpr int kSmemBytes = (kPipeBytes > kEpiBytes ? kPipeBytes : kEpiBytes) + 1024;
  static_assert(kStageBytes % 1024 == 0, "swizzle atoms need 1024-byte alignment");
  static_assert(kStages >= 3, "the pipeline keeps one tile of wgmmas in flight");
};

template <MmaType kType, int kBN, int kSmemBudget>
__global__ void __launch_bounds__(256, 1) ternary_wgmma_kernel(const GemmParams p) {
#ifdef BITNET_WGMMA_ENABLED
  using Tr = WgmmaTraits<kType, kBN, kSmemBudget>;
  constexpr int kStages = Tr::kStages;
  using T = AccType<kType>;
  extern __shared__ __align__(128) uint8_t smem_raw[];
  // Swizzle atoms must sit on 1024-byte boundaries.
  const uint32_t raw_base = SmemAddr(smem_raw);
  const uint32_t pad = ((raw_base + 1023) & ~1023u) - raw_base;
  uint8_t* smem = smem_raw + pad;
  const uint32_t smem_base = raw_base + pad;

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;  // 0..7; warpgroup = warp / 4
  const int block_w0 = blockIdx.x * Tr::kBW;
  const int block_b0 = blockIdx.y * Tr::kBB;
  const int kt0 = blockIdx.z * p.kt_per_split;
  const int nkt = min(p.kt_per_split, p.k_tiles - kt0);

  const ActCopyPlan<Tr::kBB, Tr::kChunks, Tr::kThreads, Tr::kElemBytes> act_plan(
      p, block_b0, tid, [](int r, int c) {
        return static_cast<uint32_t>((c >> 3) * Tr::kColBlockBytes + r * 128 +
                                     (((c & 7) ^ (r & 7)) << 4));
      });
  const WeightCopyPlan<Tr::kBW, Tr::kThreads> w_plan(p, block_w0, tid);
  auto load_stage = [&](int stage, int kt) {
    const uint32_t act = smem_base + stage * Tr::kStageBytes;
    act_plan.Load(act, kt, p.x_k_limit);
    w_plan.Load(act + Tr::kActStageBytes, kt, tid);
  };

  T acc[Tr::kAccRegs];
#pragma unroll
  for (int i = 0; i < Tr::kAccRegs; ++i) acc[i] = T(0);

  // Software pipeline: cp.async runs kStages - 2 tiles ahead; the wgmmas of
  // tile i stay in flight while tile i + 1 is waited for and decoded (A
  // fragments double-buffered in registers), so the tensor cores are not
  // idle during barriers and decoding. Stage slot (i - 2) % kStages is
  // refilled at tile i: every warpgroup has retired tile i - 2's wgmmas
  // (wait_group 1 at the end of tile i - 1) before the barrier of tile i.
  uint32_t a_even[Tr::kSteps][4] = {};
  uint32_t a_odd[Tr::kSteps][4] = {};
  auto tile_step = [&](int i, uint32_t (&a)[Tr::kSteps][4], uint32_t (&a_prev)[Tr::kSteps][4]) {
    CpAsyncWait<kStages - 3>();
    // cp.async wrote through the generic proxy; wgmma reads through the
    // async proxy.
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();
    const int nx = i + kStages - 2;
    if (nx < nkt) load_stage(nx % kStages, kt0 + nx);
    CpAsyncCommit();
    const uint32_t act = smem_base + (i % kStages) * Tr::kStageBytes;
    const uint32_t wst = act + Tr::kActStageBytes;
    // Warp w owns weight rows 16w..16w+15 of the block (warpgroup w / 4 owns
    // 64 rows): exactly the rows of its wgmma A fragment.
    const uint4 wv = LdShared128(wst + (warp * 32 + lane) * 16);
    DecodeAndIssueTile<kType, kBN, Tr::kColBlockBytes>(wv, a, acc, act);
    asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
    // Tile i - 1's wgmmas are done: its A registers may now be reused. Keep
    // them live until here so the compiler cannot reuse them earlier.
    FenceRegs(a_prev);
  };

#pragma unroll
  for (int s = 0; s < kStages - 2; ++s) {
    if (s < nkt) load_stage(s, kt0 + s);
    CpAsyncCommit();
  }
  int i = 0;
  for (; i + 1 < nkt; i += 2) {
    tile_step(i, a_even, a_odd);
    tile_step(i + 1, a_odd, a_even);
  }
  if (i < nkt) tile_step(i, a_even, a_odd);
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  FenceRegs(a_even);
  FenceRegs(a_odd);
  WgmmaFenceOperand(acc);
  CpAsyncWait<0>();
  __syncthreads();

  if (p.splits > 1) {
    const int tile = blockIdx.x + gridDim.x * blockIdx.y;
    if (!SplitKReduce<T, Tr::kAccRegs, Tr::kThreads>(acc, p, tile)) return;
  }
  // acc[4 j + e] is C-fragment element e of n-tile j for the warp's 16 rows.
  auto& acc3 = reinterpret_cast<T(&)[1][kBN / 8][4]>(acc);
  Epilogue<Tr::kBW, Tr::kBB, Tr::kThreads>(
      p, acc3, reinterpret_cast<float*>(smem), block_w0, block_b0,
      [&](int) { return warp * 16; }, [&](int j) { return j * 8; });
#else
  using Tr = WgmmaTraits<kType, kBN, kSmemBudget>;
  static_assert(Tr::kSteps > 0 && Tr::kAccRegs > 0 && Tr::kChunks > 0,
                "traits are used by the sm_90a body");
  __trap();  // never launched: the host checks CudaDeviceHasWgmma first
#endif
}

template <MmaType kType, int kBN, int kSmemBudget>
cudaError_t LaunchWgmma(const GemmParams& p, dim3 grid, cudaStream_t stream) {
  using Tr = WgmmaTraits<kType, kBN, kSmemBudget>;
  constexpr auto kernel = ternary_wgmma_kernel<kType, kBN, kSmemBudget>;
  const cudaError_t e = EnsureDynamicSmem<kernel>(Tr::kSmemBytes);
  if (e != cudaSuccess) return e;
  kernel<<<grid, Tr::kThreads, Tr::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

__global__ void probe_wgmma_kernel(int* out) {
#ifdef BITNET_WGMMA_ENABLED
  *out = 1;
#else
  *out = 0;
#endif
}

#define BITNET_WGMMA_CONFIG(name, BN, ST)                                                    \
  GemmKernelInfo {                                                                            \
    name, 128, BN, 256, true, false, {                                                        \
      &LaunchWgmma<MmaType::kF16, BN, ST>, &LaunchWgmma<MmaType::kBF16, BN, ST>,              \
          &LaunchWgmma<MmaType::kS8, BN, ST>                                                  \
    }                                                                                         \
  }
// int8 only: the fp16/bf16 flavours of this tile need more registers than
// the accumulators leave (they spill).
#define BITNET_WGMMA_INT8_CONFIG(name, BN, ST)                                               \
  GemmKernelInfo {                                                                            \
    name, 128, BN, 256, true, false, { nullptr, nullptr, &LaunchWgmma<MmaType::kS8, BN, ST> } \
  }

}  // namespace

cudaError_t ProbeWgmma(int* has_wgmma, cudaStream_t stream) {
  int* d = nullptr;
  cudaError_t e = cudaMalloc(&d, sizeof(int));
  if (e != cudaSuccess) return e;
  probe_wgmma_kernel<<<1, 1, 0, stream>>>(d);
  e = cudaGetLastError();
  if (e == cudaSuccess) e = cudaMemcpyAsync(has_wgmma, d, sizeof(int), cudaMemcpyDeviceToHost, stream);
  if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
  cudaFree(d);
  return e;
}

// The last argument is the pipeline's shared-memory budget (bytes): ~110 KB
// lets two blocks share an SM, ~220 KB gives one block a deep pipeline.
extern const GemmKernelInfo kWgmmaKernels[] = {
    BITNET_WGMMA_CONFIG("wgmma_w128_b64", 64, 110 * 1024),
    BITNET_WGMMA_CONFIG("wgmma_w128_b128", 128, 220 * 1024),
    BITNET_WGMMA_INT8_CONFIG("wgmma_w128_b256", 256, 220 * 1024),
};
extern const int kWgmmaKernelCount = sizeof(kWgmmaKernels) / sizeof(kWgmmaKernels[0]);

}  // namespace bitnet::cuda_internal

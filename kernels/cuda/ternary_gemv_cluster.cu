// Small-batch GEMM with K split across a thread-block cluster (Hopper, sm_90).
//
// Why: the one-latency gemv kernels (ternary_mma.cu) give every block the
// whole K, so every block stages all of x for its batch rows. At M = 16 that
// is 64-128 KB per block and 15-30 MB of L2 -> SM traffic per launch, more
// than the packed weights themselves (4-11 MB), and the time grows with it
// (session 11, H100: N = 11008 fp16 M = 1 7.4 us, M = 16 13.2 us; int8, half
// the x bytes, 10.7 us). The x bytes a launch moves are (weight rows per
// block)^-1 x N x M x K, so only more weight rows per block cut them.
//
// Here a block owns 16 rows per warp (128 with 8 warps: 4-8x the gemv's
// 16-48) but only a slice of K: the C blocks of a cluster (C = k_tiles / kKt,
// at most 8) split K, each staging x for its own kKt k-tiles only. Every
// warp keeps its row group's kKt weight tiles in flight at once (as the
// gemv does), decodes them and runs mma.sync against the block's x; the
// cluster then sums its C partial tiles through distributed shared memory
// (each block finalizes every C-th output, adding the C partials in rank
// order: deterministic) and runs the epilogue. No global scratch, no atomics.
// K beyond C x kKt k-tiles is covered in passes (block rank r takes slices
// r, r + C, ...).
//
// Launched with PDL like the gemv: weight loads go out before
// griddepcontrol.wait; x, row scales and y after it.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/ternary_device.cuh"
#include "kernels/cuda/ternary_launch.h"

namespace bitnet::cuda_internal {
namespace {

template <MmaType kType, int kNT, int kWarpCount, int kKtPerBlock>
struct ClusterGemvTraits {
  static constexpr int kWarps = kWarpCount;
  static constexpr int kKt = kKtPerBlock;  // k-tiles per block per pass
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kBW = kWarps * 16;  // one 16-row group per warp
  static constexpr int kBB = kNT * 8;
  static constexpr int kElemBytes = kType == MmaType::kS8 ? 1 : 2;
  static constexpr int kElemsPerChunk = 16 / kElemBytes;
  static constexpr int kRowBytes = 128 * kElemBytes;  // one k-tile of a batch row
  static constexpr int kChunks = kRowBytes / 16;
  static constexpr int kXRowStride = kKt * kRowBytes;
  static constexpr int kSteps = kType == MmaType::kS8 ? 4 : 8;
  static constexpr int kRegs = kNT * 4;                 // accumulators per lane
  static constexpr int kEntries = kWarps * kRegs * 32;  // partial sums per block
  static constexpr int kPartBytes = kEntries * 4;
  // Partial sums first (fixed size), then only the launch's real x rows.
  static constexpr int SmemBytesFor(int rows) { return kPartBytes + rows * kXRowStride; }
};

// The cluster size a launch uses: enough blocks to cover K in one pass, at
// most the portable 8.
template <int kKt>
int ClusterSizeFor(int k_tiles) {
  return std::clamp((k_tiles + kKt - 1) / kKt, 1, 8);
}

// Cluster primitives. Below sm_90 (the sm_80 pass of this file; the
// dispatcher never launches these configurations there) a block is its own
// one-block cluster.
__device__ __forceinline__ int ClusterRank() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return static_cast<int>(r);
#else
  return 0;
#endif
}
__device__ __forceinline__ int ClusterBlocks() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_nctarank;\n" : "=r"(r));
  return static_cast<int>(r);
#else
  return 1;
#endif
}
// Every block of the cluster has arrived; writes to shared memory before the
// barrier are visible to the cluster's reads after it.
__device__ __forceinline__ void ClusterSync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "barrier.cluster.arrive.release.aligned;\n"
      "barrier.cluster.wait.acquire.aligned;\n" ::
          : "memory");
#else
  __syncthreads();
#endif
}
// The 32-bit value at this block's shared address `local_addr` in block
// `rank` of the cluster.
template <typename T>
__device__ __forceinline__ T LdCluster(uint32_t local_addr, int rank) {
  uint32_t v;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(local_addr), "r"(rank));
  asm volatile("ld.shared::cluster.b32 %0, [%1];\n" : "=r"(v) : "r"(remote) : "memory");
#else
  asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(local_addr) : "memory");
#endif
  if constexpr (std::is_same_v<T, float>) {
    return __uint_as_float(v);
  } else {
    return static_cast<T>(v);
  }
}

template <MmaType kType, int kNT, int kWarps, int kKt>
__global__ void __launch_bounds__(kWarps * 32, 2) ternary_gemv_cluster_kernel(const GemmParams p) {
  using Tr = ClusterGemvTraits<kType, kNT, kWarps, kKt>;
  using T = AccType<kType>;
  extern __shared__ __align__(128) uint8_t smem[];
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int rank = ClusterRank();
  const int blocks = ClusterBlocks();
  const int block_w0 = (blockIdx.x / blocks) * Tr::kBW;
  const int block_b0 = blockIdx.y * Tr::kBB;
  T* part = reinterpret_cast<T*>(smem);
  const uint32_t part_base = SmemAddr(smem);
  const uint32_t x_base = part_base + Tr::kPartBytes;
  const char* x = static_cast<const char*>(p.x);
  // This warp's row group; groups past n (the last block of N = 11008 and
  // 128-row blocks reach past the 256-row weight padding) load nothing.
  const bool group_valid = block_w0 + 16 * warp < p.n;
  const uint4* wrow = p.w + static_cast<int64_t>(block_w0 / 16 + warp) * p.k_tiles * 32 + lane;
  const int mi = lane >> 3;
  const int ri = lane & 7;
  const int rows = max(1, min(Tr::kBB, p.m - block_b0));
  const int last_row = rows - 1;

  PdlLaunchDependents();

  // The outputs this block finalizes: entries rank, rank + C, ... of the
  // kEntries partial sums, thread tid taking every kThreads-th of them. The
  // first kOuts per thread (all of them from C = kPreloadBlocks on) get
  // their epilogue operands now: the gemv's profile showed the epilogue
  // waiting a full memory latency for w_scale when it was loaded last.
  // Weight scales and bias never come from the previous kernel; row scales
  // are read after the PDL wait.
  constexpr int kPreloadBlocks = 3;
  constexpr int kOuts =
      (Tr::kEntries + Tr::kThreads * kPreloadBlocks - 1) / (Tr::kThreads * kPreloadBlocks);
  auto entry_of = [&](int o) { return rank + blocks * (tid + o * Tr::kThreads); };
  // e = (w * kRegs + reg) * 32 + ln with reg = j * 4 + el, ln = 4 g + t.
  auto n_of = [&](int e) {
    const int el = ((e >> 5) % Tr::kRegs) & 3;
    return block_w0 + ((e >> 5) / Tr::kRegs) * 16 + ((e & 31) >> 2) + 8 * (el >> 1);
  };
  auto m_of = [&](int e) {
    const int reg = (e >> 5) % Tr::kRegs;
    return block_b0 + (reg >> 2) * 8 + 2 * (e & 3) + (reg & 1);
  };
  int out_m[kOuts];
  int out_n[kOuts];
  float out_ws[kOuts];
  float out_bias[kOuts];
  float out_rs[kOuts];
#pragma unroll
  for (int o = 0; o < kOuts; ++o) {
    const int e = entry_of(o);
    const bool valid = e < Tr::kEntries;
    out_n[o] = valid ? n_of(e) : p.n;
    out_m[o] = valid ? m_of(e) : p.m;
    const bool store = out_m[o] < p.m && out_n[o] < p.n;
    out_ws[o] = store ? __ldg(p.w_scale + out_n[o]) : 0.0f;
    out_bias[o] = store && p.bias != nullptr ? __ldg(p.bias + out_n[o]) : 0.0f;
    out_rs[o] = 1.0f;
  }
  auto load_row_scales = [&] {
#pragma unroll
    for (int o = 0; o < kOuts; ++o) {
      if (out_m[o] < p.m && out_n[o] < p.n && p.row_scale != nullptr) {
        out_rs[o] = p.row_scale[out_m[o]];
      }
    }
  };

  // Two accumulator sets (even / odd k-tile) halve the chain of dependent MMAs.
  T acc[2][kNT][4];
#pragma unroll
  for (int s = 0; s < 2; ++s)
#pragma unroll
    for (int j = 0; j < kNT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[s][j][e] = T(0);

  const int first_kt = rank * kKt;
  for (int kt0 = first_kt; kt0 < p.k_tiles; kt0 += blocks * kKt) {
    uint4 wv[kKt];
#pragma unroll
    for (int i = 0; i < kKt; ++i) {
      const int kt = kt0 + i;
      wv[i] = kt < p.k_tiles && group_valid ? __ldg(wrow + static_cast<int64_t>(kt) * 32)
                                            : make_uint4(0, 0, 0, 0);
    }
    if (kt0 == first_kt) {
      PdlWaitForPrerequisites();
      load_row_scales();
    } else {
      __syncthreads();  // the previous pass's reads of x are done
    }
    {
      // Chunk q = tid + kThreads * it of the (row, k-tile, 16-byte chunk)
      // grid of the block's real rows, swizzled as the gemv stages it.
      constexpr int kPerRow = kKt * Tr::kChunks;
      constexpr int kIters = (Tr::kBB * kPerRow + Tr::kThreads - 1) / Tr::kThreads;
      // Not unrolled: at 11 k-tiles per block the unrolled addresses spilled.
#pragma unroll 1
      for (int it = 0; it < kIters; ++it) {
        const int q = tid + it * Tr::kThreads;
        const int r = q / kPerRow;
        if (r >= rows) break;
        const int rem = q % kPerRow;
        const int ktl = rem / Tr::kChunks;
        const int c = rem % Tr::kChunks;
        const int kt = kt0 + ktl;
        const int64_t col = static_cast<int64_t>(kt) * 128 + c * Tr::kElemsPerChunk;
        const bool pred = kt < p.k_tiles && col < p.x_k_limit;
        const char* src = x + (static_cast<int64_t>(block_b0 + r) * p.ldx + col) * Tr::kElemBytes;
        CpAsync16(x_base + r * Tr::kXRowStride + ((rem ^ (r & 7)) << 4), pred ? src : x, pred);
      }
    }
    CpAsyncCommit();
    CpAsyncWait<0>();
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kKt; ++i) {
      if (kt0 + i >= p.k_tiles) break;
      StaticFor<0, Tr::kSteps>([&](auto s_const) {
        constexpr int S = decltype(s_const)::value;
        uint32_t a[4];
        DecodeStep<kType, S>(wv[i], a);
        uint32_t b[kNT][2];
        const int chunk16 = i * Tr::kChunks + 2 * S + (mi & 1);
        // Rows past the batch read the last real row instead: they only feed
        // accumulator columns that are never stored.
        if constexpr (kNT == 1) {
          uint32_t rr[2];
          const int row = min(ri, last_row);
          LdMatrixX2(rr, x_base + row * Tr::kXRowStride + ((chunk16 ^ (row & 7)) << 4));
          b[0][0] = rr[0];
          b[0][1] = rr[1];
        } else {
#pragma unroll
          for (int j = 0; j < kNT; j += 2) {
            const int row = min((j + (mi >> 1)) * 8 + ri, last_row);
            uint32_t rr[4];
            LdMatrixX4(rr, x_base + row * Tr::kXRowStride + ((chunk16 ^ (row & 7)) << 4));
            b[j][0] = rr[0];
            b[j][1] = rr[1];
            b[j + 1][0] = rr[2];
            b[j + 1][1] = rr[3];
          }
        }
#pragma unroll
        for (int j = 0; j < kNT; ++j) {
          if constexpr (kType == MmaType::kS8) {
            Mma(acc[i & 1][j], a, b[j]);
          } else {
            Mma<kType>(acc[i & 1][j], a, b[j]);
          }
        }
      });
    }
  }
  if (first_kt >= p.k_tiles) {  // no pass ran (the launcher never does this)
    PdlWaitForPrerequisites();
    load_row_scales();
  }

  // This block's partial sums, then the cluster's sum of each output.
#pragma unroll
  for (int j = 0; j < kNT; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      part[(warp * Tr::kRegs + j * 4 + e) * 32 + lane] = acc[0][j][e] + acc[1][j][e];
    }
  ClusterSync();
  auto cluster_sum = [&](int e) {
    const uint32_t addr = part_base + static_cast<uint32_t>(e) * 4;
    T sum = T(0);
    for (int c = 0; c < blocks; ++c) sum = sum + LdCluster<T>(addr, c);
    return sum;
  };
#pragma unroll
  for (int o = 0; o < kOuts; ++o) {
    if (out_m[o] >= p.m || out_n[o] >= p.n) continue;  // also entries past kEntries
    StoreOutput(p, static_cast<int64_t>(out_m[o]) * p.ldy + out_n[o],
                EpilogueValueFrom(p, cluster_sum(entry_of(o)), out_ws[o], out_bias[o],
                                  out_rs[o]));
  }
  // Clusters of fewer than kPreloadBlocks (small K): the remaining entries,
  // with their operands loaded here.
  for (int e = entry_of(kOuts); e < Tr::kEntries; e += blocks * Tr::kThreads) {
    const int n = n_of(e);
    const int m = m_of(e);
    if (m >= p.m || n >= p.n) continue;
    const float rs = p.row_scale != nullptr ? p.row_scale[m] : 1.0f;
    const float bias = p.bias != nullptr ? __ldg(p.bias + n) : 0.0f;
    StoreOutput(p, static_cast<int64_t>(m) * p.ldy + n,
                EpilogueValueFrom(p, cluster_sum(e), __ldg(p.w_scale + n), bias, rs));
  }
  // No block leaves (and frees its shared memory) while others still read it.
  ClusterSync();
}

template <MmaType kType, int kNT, int kWarps, int kKt>
cudaError_t LaunchClusterGemv(const GemmParams& p, dim3 grid, cudaStream_t stream) {
  using Tr = ClusterGemvTraits<kType, kNT, kWarps, kKt>;
  constexpr auto kernel = ternary_gemv_cluster_kernel<kType, kNT, kWarps, kKt>;
  const cudaError_t e = EnsureDynamicSmem<kernel>(Tr::SmemBytesFor(Tr::kBB));
  if (e != cudaSuccess) return e;
  const int blocks = ClusterSizeFor<kKt>(p.k_tiles);
  cudaLaunchAttribute attributes[2] = {};
  attributes[0].id = cudaLaunchAttributeClusterDimension;
  attributes[0].val.clusterDim.x = blocks;
  attributes[0].val.clusterDim.y = 1;
  attributes[0].val.clusterDim.z = 1;
  attributes[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attributes[1].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(grid.x * blocks, grid.y, 1);
  config.blockDim = dim3(Tr::kThreads);
  config.dynamicSmemBytes = Tr::SmemBytesFor(std::clamp(p.m, 1, Tr::kBB));
  config.stream = stream;
  config.attrs = attributes;
  config.numAttrs = p.pdl ? 2 : 1;
  const cudaError_t launched = cudaLaunchKernelEx(&config, kernel, p);
  if (launched != cudaSuccess) (void)cudaGetLastError();  // as LaunchWithOptionalPdl
  return launched;
}

// Needs sm_90 (clusters): flagged like the wgmma configurations, so that the
// dispatcher offers it only where this build's sm_90a code runs.
#define BITNET_CLUSTER_GEMV_CONFIG(name, NT, WARPS, KT)                                  \
  GemmKernelInfo {                                                                       \
    name, WARPS * 16, NT * 8, WARPS * 32, true, true, {                                  \
      &LaunchClusterGemv<MmaType::kF16, NT, WARPS, KT>,                                  \
          &LaunchClusterGemv<MmaType::kBF16, NT, WARPS, KT>,                             \
          &LaunchClusterGemv<MmaType::kS8, NT, WARPS, KT>                                \
    }, 2, true                                                                           \
  }

}  // namespace

// Cluster gemv configurations (ids follow kWgmmaWsKernels). "kt" is the
// k-tiles per block: K = 4096 (32 k-tiles) is 8 blocks per cluster at kt4,
// 3 at kt11.
extern const GemmKernelInfo kClusterGemvKernels[] = {
    BITNET_CLUSTER_GEMV_CONFIG("cgemv_w128_b8_kt4", 1, 8, 4),
    BITNET_CLUSTER_GEMV_CONFIG("cgemv_w128_b16_kt4", 2, 8, 4),
    BITNET_CLUSTER_GEMV_CONFIG("cgemv_w128_b16_kt11", 2, 8, 11),
};
extern const int kClusterGemvKernelCount =
    sizeof(kClusterGemvKernels) / sizeof(kClusterGemvKernels[0]);

}  // namespace bitnet::cuda_internal

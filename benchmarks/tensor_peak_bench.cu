// bitnet-bench tensor-peak: what the card's tensor cores and cuBLAS can do,
// as the ceilings our ternary kernels are judged against.
//
//  1. A chain of wgmma instructions with both operands in shared memory (no
//     loads, no decode, no epilogue), one block of two warpgroups per SM,
//     the same issue pattern as ternary_wgmma_ws.cu (a group of 4 per
//     k-tile, one group in flight): fp16 m64nNk16 against int8 m64nNk32,
//     N = 128 and 256. Prints MACs/s and cycles per wgmma pair (clock64).
//  2. A chain of mma.sync instructions on register operands (the gemv
//     kernels' tensor-core instruction): 16 warps per SM, each with 8
//     independent 16 x 8 accumulator tiles, fp16 m16n8k16 against int8
//     m16n8k32. Prints MACs/s and cycles per mma per SM sub-partition, the
//     floor on what M = 16 costs per decoded weight (session 19).
//  3. cuBLAS at M = 2048, K = 4096, N = 4096 and 11008: fp16 (fp32
//     accumulate) and int8 (int32 accumulate, cublasGemmEx with
//     CUBLAS_COMPUTE_32I). Median of back-to-back runs on the same buffers
//     (L2-warm: a ceiling, not the "rotate" method of `kernels`).
//
// Session 4 used it to show that the int8 tensor path does run at twice the
// fp16 rate on an H100 (so the ws kernel's int8 tiles, no faster than its
// fp16 ones, lose the factor elsewhere: benchmarks/NOTES-kernels.md).
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <type_traits>
#include <vector>

#include "kernels/cuda/ternary_device.cuh"
#include "kernels/cuda/wgmma_ops.cuh"

namespace {

using bitnet::cuda_internal::WgmmaSsF16N128;
using bitnet::cuda_internal::WgmmaSsF16N256;
using bitnet::cuda_internal::WgmmaSsS8N128;
using bitnet::cuda_internal::WgmmaSsS8N256;

constexpr int kGroup = 4;         // wgmmas per commit group (one k-tile)
constexpr int kSmemBytes = 64 * 1024;

#ifdef BITNET_WGMMA_ENABLED
// K-major, 128-byte swizzle, 8-row atoms of 1024 bytes (as the kernels).
__device__ __forceinline__ uint64_t SwizzledDesc(uint32_t addr) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (uint64_t{1} << 16) |
         (uint64_t{1024 >> 4} << 32) | (uint64_t{1} << 62);
}
#endif

// kInt8: s8 m64nNk32 (int32 accumulators), else f16 m64nNk16 (fp32).
// Shared memory is left uninitialized: the values do not change the rate.
template <bool kInt8, int kN>
__global__ void __launch_bounds__(256, 1) wgmma_chain_kernel(int iters, long long* cycles,
                                                              float* sink) {
#ifdef BITNET_WGMMA_ENABLED
  extern __shared__ __align__(1024) uint8_t smem[];
  const uint32_t base = (static_cast<uint32_t>(__cvta_generic_to_shared(smem)) + 1023) & ~1023u;
  using Acc = std::conditional_t<kInt8, int, float>;
  Acc acc[kN / 2];
  for (auto& a : acc) a = Acc(0);
  const uint64_t desc_a = SwizzledDesc(base + (threadIdx.x / 128) * 8192);
  const uint64_t desc_b = SwizzledDesc(base + 16384);
  __syncthreads();
  const long long start = clock64();
  for (int it = 0; it < iters; ++it) {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int s = 0; s < kGroup; ++s) {
      // k-step s: 32 bytes further along each 128-byte row (+2 in 16-byte units).
      if constexpr (kInt8 && kN == 256) WgmmaSsS8N256(acc, desc_a + 2 * s, desc_b + 2 * s);
      if constexpr (kInt8 && kN == 128) WgmmaSsS8N128(acc, desc_a + 2 * s, desc_b + 2 * s);
      if constexpr (!kInt8 && kN == 256) WgmmaSsF16N256(acc, desc_a + 2 * s, desc_b + 2 * s);
      if constexpr (!kInt8 && kN == 128) WgmmaSsF16N128(acc, desc_a + 2 * s, desc_b + 2 * s);
    }
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
  }
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  const long long stop = clock64();
  float sum = 0;
  for (auto a : acc) sum += static_cast<float>(a);
  if (sum == 1234.5f) sink[threadIdx.x] = sum;  // keeps the chain alive
  if (threadIdx.x == 0) cycles[blockIdx.x] = stop - start;
#else
  (void)iters, (void)cycles, (void)sink;
#endif
}

// kTiles independent accumulator tiles per warp, each taking one mma per
// iteration; operands come from threadIdx so nothing folds away.
template <bool kInt8, int kTiles>
__global__ void __launch_bounds__(512, 1) mma_chain_kernel(int iters, long long* cycles,
                                                            float* sink) {
  using bitnet::cuda_internal::MmaType;
  using Acc = std::conditional_t<kInt8, int, float>;
  const uint32_t t = threadIdx.x;
  const uint32_t a[4] = {t * 0x00010001u, t ^ 0x3c003c00u, t + 7, t * 3};
  const uint32_t b[2] = {t ^ 0x01000100u, t + 0x3c00u};
  Acc acc[kTiles][4];
  for (auto& tile : acc)
    for (auto& v : tile) v = Acc(0);
  __syncthreads();
  const long long start = clock64();
  for (int it = 0; it < iters; ++it) {
#pragma unroll
    for (int i = 0; i < kTiles; ++i) {
      if constexpr (kInt8) {
        bitnet::cuda_internal::Mma(acc[i], a, b);
      } else {
        bitnet::cuda_internal::Mma<MmaType::kF16>(acc[i], a, b);
      }
    }
  }
  __syncthreads();
  const long long stop = clock64();
  float sum = 0;
  for (auto& tile : acc)
    for (auto v : tile) sum += static_cast<float>(v);
  if (sum == 1234.5f) sink[threadIdx.x] = sum;  // keeps the chain alive
  if (threadIdx.x == 0) cycles[blockIdx.x] = stop - start;
}

bool Check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return true;
  std::fprintf(stderr, "bitnet-bench tensor-peak: %s: %s\n", what, cudaGetErrorString(e));
  return false;
}

// Launches launch(10) as a warm-up, then times launch(iters) with events.
// Gives the wall time and block 0's clock64 cycles (which the kernel writes
// to `cycles`).
template <typename Launch>
bool TimeChain(const Launch& launch, int iters, const char* what, const long long* cycles,
               float* ms, long long* block0_cycles) {
  launch(10);
  cudaEvent_t begin, end;
  cudaEventCreate(&begin);
  cudaEventCreate(&end);
  cudaEventRecord(begin);
  launch(iters);
  cudaEventRecord(end);
  const bool ok = Check(cudaEventSynchronize(end), what);
  if (ok) {
    cudaEventElapsedTime(ms, begin, end);
    cudaMemcpy(block0_cycles, cycles, sizeof(*block0_cycles), cudaMemcpyDeviceToHost);
  }
  cudaEventDestroy(begin);
  cudaEventDestroy(end);
  return ok;
}

template <bool kInt8, int kN>
bool RunChain(int sms, long long* cycles, float* sink) {
  constexpr int kIters = 2000;
  auto kernel = wgmma_chain_kernel<kInt8, kN>;
  if (!Check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes),
             "smem attribute")) {
    return false;
  }
  float ms = 0;
  long long block0_cycles = 0;
  auto launch = [&](int iters) { kernel<<<sms, 256, kSmemBytes>>>(iters, cycles, sink); };
  if (!TimeChain(launch, kIters, "wgmma chain", cycles, &ms, &block0_cycles)) return false;
  const double macs = 2.0 /*warpgroups*/ * kIters * kGroup * 64.0 * kN * (kInt8 ? 32 : 16) * sms;
  std::printf("wgmma chain %-4s m64n%dk%d: %8.3f ms  %6.0f T MAC/s  %5.0f T%s/s  %6.1f cycles per "
              "wgmma pair  (%.0f MHz)\n",
              kInt8 ? "int8" : "fp16", kN, kInt8 ? 32 : 16, ms, macs / ms / 1e9, 2 * macs / ms / 1e9,
              kInt8 ? "OP" : "FLOP", static_cast<double>(block0_cycles) / (kIters * kGroup),
              block0_cycles / (ms * 1e3));
  return true;
}

template <bool kInt8, int kTiles>
bool RunMmaChain(int sms, long long* cycles, float* sink) {
  constexpr int kIters = 20000;
  constexpr int kWarps = 16;
  float ms = 0;
  long long block0_cycles = 0;
  auto launch = [&](int iters) {
    mma_chain_kernel<kInt8, kTiles><<<sms, kWarps * 32>>>(iters, cycles, sink);
  };
  if (!TimeChain(launch, kIters, "mma.sync chain", cycles, &ms, &block0_cycles)) return false;
  const double macs = static_cast<double>(kWarps) * kIters * kTiles * 16.0 * 8 *
                      (kInt8 ? 32 : 16) * sms;
  // 4 sub-partitions per SM, kWarps / 4 warps each.
  const double per_mma = static_cast<double>(block0_cycles) / (kIters * kTiles * (kWarps / 4));
  std::printf("mma.sync chain %-4s m16n8k%d, %d warps x %d tiles: %8.3f ms  %6.0f T MAC/s  %5.0f "
              "T%s/s  %5.2f cycles per mma per SM sub-partition  (%.0f MHz)\n",
              kInt8 ? "int8" : "fp16", kInt8 ? 32 : 16, kWarps, kTiles, ms, macs / ms / 1e9,
              2 * macs / ms / 1e9, kInt8 ? "OP" : "FLOP", per_mma, block0_cycles / (ms * 1e3));
  return true;
}

// C[m, n] = A[m, k] B[n, k]^T, as cuBLAS sees our layout (both K-major).
bool RunCublas(cublasHandle_t handle, int m, int n, int k, bool int8) {
  const size_t elem = int8 ? 1 : 2;
  void *a = nullptr, *b = nullptr, *c = nullptr;
  if (!Check(cudaMalloc(&a, elem * m * k), "malloc") || !Check(cudaMalloc(&b, elem * n * k), "malloc") ||
      !Check(cudaMalloc(&c, 4ull * m * n), "malloc")) {
    return false;
  }
  cudaMemset(a, 1, elem * m * k);
  cudaMemset(b, 1, elem * n * k);
  const int one_i = 1, zero_i = 0;
  const float one_f = 1, zero_f = 0;
  auto call = [&] {
    if (int8) {
      return cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &one_i, b, CUDA_R_8I, k, a,
                          CUDA_R_8I, k, &zero_i, c, CUDA_R_32I, n, CUBLAS_COMPUTE_32I,
                          CUBLAS_GEMM_DEFAULT);
    }
    return cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &one_f, b, CUDA_R_16F, k, a,
                        CUDA_R_16F, k, &zero_f, c, CUDA_R_16F, n, CUBLAS_COMPUTE_32F,
                        CUBLAS_GEMM_DEFAULT);
  };
  bool ok = call() == CUBLAS_STATUS_SUCCESS;
  std::vector<float> us;
  cudaEvent_t begin, end;
  cudaEventCreate(&begin);
  cudaEventCreate(&end);
  for (int i = 0; ok && i < 55; ++i) {
    cudaEventRecord(begin);
    ok = call() == CUBLAS_STATUS_SUCCESS;
    cudaEventRecord(end);
    cudaEventSynchronize(end);
    float ms = 0;
    cudaEventElapsedTime(&ms, begin, end);
    if (i >= 5) us.push_back(ms * 1000);  // 5 warm-up runs
  }
  cudaEventDestroy(begin);
  cudaEventDestroy(end);
  cudaFree(a);
  cudaFree(b);
  cudaFree(c);
  if (!ok) {
    std::fprintf(stderr, "bitnet-bench tensor-peak: cuBLAS %s failed\n", int8 ? "int8" : "fp16");
    return false;
  }
  std::sort(us.begin(), us.end());
  const double median = us[us.size() / 2];
  std::printf("cuBLAS %-4s M=%d N=%d K=%d: %8.2f us  %6.0f T%s/s\n", int8 ? "int8" : "fp16", m, n,
              k, median, 2.0 * m * n * k / median / 1e6, int8 ? "OP" : "FLOP");
  return true;
}

}  // namespace

int RunTensorPeak(int argc, char** argv) {
  (void)argv;
  if (argc > 1) {
    std::fprintf(stderr, "usage: bitnet-bench tensor-peak (no options)\n");
    return 2;
  }
  cudaDeviceProp prop{};
  if (!Check(cudaGetDeviceProperties(&prop, 0), "no CUDA device")) return 1;
  if (prop.major != 9) {
    std::fprintf(stderr, "bitnet-bench tensor-peak: needs a Hopper GPU (sm_90), found sm_%d%d\n",
                 prop.major, prop.minor);
    return 1;
  }
  std::printf("# card: %s (%d SMs)\n", prop.name, prop.multiProcessorCount);
  long long* cycles = nullptr;
  float* sink = nullptr;
  if (!Check(cudaMalloc(&cycles, sizeof(long long) * prop.multiProcessorCount), "malloc") ||
      !Check(cudaMalloc(&sink, 1024 * sizeof(float)), "malloc")) {
    return 1;
  }
  bool ok = RunChain<false, 256>(prop.multiProcessorCount, cycles, sink) &&
            RunChain<true, 256>(prop.multiProcessorCount, cycles, sink) &&
            RunChain<false, 128>(prop.multiProcessorCount, cycles, sink) &&
            RunChain<true, 128>(prop.multiProcessorCount, cycles, sink) &&
            RunMmaChain<false, 8>(prop.multiProcessorCount, cycles, sink) &&
            RunMmaChain<true, 8>(prop.multiProcessorCount, cycles, sink) &&
            RunMmaChain<false, 4>(prop.multiProcessorCount, cycles, sink);
  cudaFree(cycles);
  cudaFree(sink);
  cublasHandle_t handle = nullptr;
  if (ok && cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) ok = false;
  for (int n : {4096, 11008}) {
    for (bool int8 : {false, true}) ok = ok && RunCublas(handle, 2048, n, 4096, int8);
  }
  if (handle != nullptr) cublasDestroy(handle);
  return ok ? 0 : 1;
}

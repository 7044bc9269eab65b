// Programmatic dependent launch (PDL, Hopper sm_90+), for the kernels that
// opt in: the small-M gemv kernels (ternary_mma.cu), the warp-specialized
// wgmma kernels (ternary_wgmma_ws.cu) and the activation preparation
// (ternary_prep.cu).
//
// Why: at small M a layer is a few microseconds of streaming packed weights,
// and on one stream the next layer's kernel normally starts only after the
// previous one has fully drained, so every layer pays a launch gap plus a
// cold DRAM latency before its first weight arrives. Weights never depend on
// the previous kernel (CudaTernaryWeights are immutable after Create), only
// the activations do. So a kernel here
//  1. lets its dependents launch as soon as it starts
//     (PdlLaunchDependents),
//  2. issues whatever depends on nothing earlier (its weight loads), then
//  3. waits for its prerequisite grids to complete and their memory to be
//     visible (PdlWaitForPrerequisites) before its first read of anything
//     a previous kernel may write (x, row scales) and before any write.
// Both instructions are no-ops when the kernel was launched without the
// programmatic-serialization attribute (plain <<<>>>: the stream already
// serialized it), and compile to nothing below sm_90.
//
// Only kernels that call PdlWaitForPrerequisites before touching dependent
// data may be launched with LaunchWithOptionalPdl(..., overlap = true): a
// kernel without the wait would read its inputs while the producer still
// runs.
#ifndef BITNET_KERNELS_CUDA_DEPENDENT_LAUNCH_CUH_
#define BITNET_KERNELS_CUDA_DEPENDENT_LAUNCH_CUH_

#include <cuda_runtime.h>

#include <utility>

namespace bitnet::cuda_internal {

// Allows the next kernel on the stream (if launched with the PDL attribute)
// to start once every block of this grid has executed this or exited. It
// says nothing about memory: the dependent still waits for this grid's
// completion in PdlWaitForPrerequisites.
__device__ __forceinline__ void PdlLaunchDependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
#endif
}

// Blocks until every prerequisite grid has completed and its writes are
// visible. The "memory" clobber keeps the compiler from moving loads of
// dependent data above it (and the weight loads issued before it below it).
__device__ __forceinline__ void PdlWaitForPrerequisites() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Asks the L2 to fetch the line holding `p` (no value comes back). A
// prefetch changes nothing that any load observes, so it may go ahead of
// PdlWaitForPrerequisites even for data the previous kernel writes: the
// kernel's own reads still come after the wait. Used for the activations,
// which the benchmark's method (and a server's first layer) read cold from
// DRAM: fetched while the previous kernel runs, they no longer queue there
// behind this kernel's weight stream after the wait.
// Like the PDL instructions, nothing below sm_90, where no kernel starts
// before its predecessor ends.
__device__ __forceinline__ void PrefetchToL2(const void* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
#else
  (void)p;
#endif
}

// Launches `kernel` on `stream` in thread-block clusters of `cluster` blocks
// (dim3(1, 1, 1): no clusters); with `overlap_previous`, with the
// programmatic stream serialization attribute, so that it may start while
// the previous kernel on the stream is still running (and, under stream
// capture, becomes a programmatic edge of the graph). Returns the launch
// error, with the runtime's last-error state cleared either way.
template <typename... KernelParams, typename... Args>
cudaError_t LaunchInClustersWithOptionalPdl(void (*kernel)(KernelParams...), dim3 grid, dim3 block,
                                            size_t dynamic_smem_bytes, cudaStream_t stream,
                                            dim3 cluster, bool overlap_previous, Args&&... args) {
  cudaLaunchAttribute attribute[2] = {};
  unsigned attributes = 0;
  if (overlap_previous) {
    attribute[attributes].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute[attributes].val.programmaticStreamSerializationAllowed = 1;
    ++attributes;
  }
  if (cluster.x * cluster.y * cluster.z > 1) {
    attribute[attributes].id = cudaLaunchAttributeClusterDimension;
    attribute[attributes].val.clusterDim.x = cluster.x;
    attribute[attributes].val.clusterDim.y = cluster.y;
    attribute[attributes].val.clusterDim.z = cluster.z;
    ++attributes;
  }
  if (attributes == 0) {
    kernel<<<grid, block, dynamic_smem_bytes, stream>>>(std::forward<Args>(args)...);
    return cudaGetLastError();
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = dynamic_smem_bytes;
  config.stream = stream;
  config.attrs = attribute;
  config.numAttrs = attributes;
  const cudaError_t e = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
  // A failed launch also leaves the error in the per-thread last-error slot;
  // clear it so that a later cudaGetLastError elsewhere does not report it
  // a second time (the <<<>>> path clears it through cudaGetLastError above).
  if (e != cudaSuccess) (void)cudaGetLastError();
  return e;
}

// The same without clusters.
template <typename... KernelParams, typename... Args>
cudaError_t LaunchWithOptionalPdl(void (*kernel)(KernelParams...), dim3 grid, dim3 block,
                                  size_t dynamic_smem_bytes, cudaStream_t stream,
                                  bool overlap_previous, Args&&... args) {
  return LaunchInClustersWithOptionalPdl(kernel, grid, block, dynamic_smem_bytes, stream,
                                         dim3(1, 1, 1), overlap_previous,
                                         std::forward<Args>(args)...);
}

}  // namespace bitnet::cuda_internal

#endif  // BITNET_KERNELS_CUDA_DEPENDENT_LAUNCH_CUH_

// An optional timeline of the gemv kernel (ternary_mma.cu), for finding where
// a small-batch launch waits. Built only with the CMake option
// BITNET_GEMV_TRACE=ON: lane 0 of every warp then stores %globaltimer at the
// points below into a buffer the host registered with SetGemvTrace. The
// trace costs 0.6-0.9 us per launch itself (session 20, H100), so only the
// relative times mean anything; without the option the kernel has no trace
// code at all. `bitnet-bench kernels` writes the buffer of the last traced
// launch when BITNET_GEMV_TRACE=FILE is set in its environment
// (benchmarks/gemv_trace_stats.py summarizes it; docs/kernels.md).
#ifndef BITNET_KERNELS_CUDA_GEMV_TRACE_H_
#define BITNET_KERNELS_CUDA_GEMV_TRACE_H_

#include <cuda_runtime.h>

namespace bitnet::cuda_internal {

// One record of kGemvTraceSlots 64-bit words per warp, at index
// (blockIdx.y * gridDim.x + blockIdx.x) * warps per block + warp. Times are
// %globaltimer nanoseconds; a record's first word is 0 if the warp did not run.
enum GemvTraceSlot : int {
  kTraceStart = 0,          // the warp begins
  kTraceWeightsIssued = 1,  // its first pass's weight loads are issued
  kTracePrerequisites = 2,  // the PDL wait for the previous kernel returned
  kTraceXIssued = 3,        // its x copies are issued
  kTraceXLanded = 4,        // x has landed (configurations that wait for all of it)
  kTraceKTileDone = 5,      // 5 + i: the MMAs of the warp's k-tile i (i < 4) are issued
  kTraceReduced = 9,        // the cross-warp reduction's barrier passed
  kTraceEnd = 10,           // its outputs are stored
  kTraceSmId = 11,          // the SM it ran on (%smid)
  kGemvTraceSlots = 12,
};

// Traces every following gemv launch of this MmaType (as int) into `buffer`
// (device memory, kGemvTraceSlots words per warp of the largest grid), or
// stops tracing when `buffer` is null. cudaErrorNotSupported when the build
// has no trace code (BITNET_GEMV_TRACE off).
cudaError_t SetGemvTrace(unsigned long long* buffer, int mma_type);

}  // namespace bitnet::cuda_internal

#endif  // BITNET_KERNELS_CUDA_GEMV_TRACE_H_

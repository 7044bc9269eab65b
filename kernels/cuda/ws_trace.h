// An optional timeline of the warp-specialized wgmma kernel
// (ternary_wgmma_ws.cu), for finding where a large-batch launch spends its
// time: the producer's loads, the consumers' barrier waits and wgmma issue
// per k-tile, the split-K reduction and the epilogue. Built only with the
// CMake option BITNET_GEMV_TRACE=ON (which also builds the gemv's trace,
// gemv_trace.h): one thread per role then stores %globaltimer at the points
// below into a buffer the host registered with SetWsTrace. The trace costs
// about 1-2 us per launch itself, so only the relative times mean anything;
// without the option the kernel has no trace code at all. `bitnet-bench
// kernels` writes the buffer of the last traced launch to FILE.ws.csv when
// BITNET_GEMV_TRACE=FILE is set in its environment
// (benchmarks/ws_trace_stats.py summarizes it; docs/kernels.md).
//
// No trace point waits for anything it would not wait for untraced: a warp
// that waited on every stage's full barrier to time the landings hung a
// multi-wave launch (session 25), so landings are seen only through the
// consumers' own waits.
#ifndef BITNET_KERNELS_CUDA_WS_TRACE_H_
#define BITNET_KERNELS_CUDA_WS_TRACE_H_

#include <cuda_runtime.h>

namespace bitnet::cuda_internal {

// One record of kWsTraceSlots 64-bit words per block, at index
// blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z). Times are
// %globaltimer nanoseconds; a record's first word is 0 if no block of that
// index has run since the buffer was cleared. Nothing clears a record between
// launches: a slot the block did not store in the last launch (k-tiles past
// its own, the reduction and epilogue of a split-K block other than its
// tile's last) keeps an earlier launch's value, older than the record's
// kWsTracePrerequisites (the producer passes its PDL wait only after the
// previous kernels completed). "Thread 0" of a warpgroup is its first
// consumer thread (tid 0, 128 or 256).
enum WsTraceSlot : int {
  kWsTraceStart = 0,          // the block begins (thread 0, after the PDL trigger)
  kWsTraceSmId = 1,           // the SM it ran on (%smid), stored with kWsTraceStart
  kWsTracePrerequisites = 2,  // the producer's PDL wait for the previous kernel returned
  kWsTraceLoopDone = 3,       // warpgroup 0's thread 0: main loop done, all wgmmas complete
  kWsTraceSynced = 4,         // thread 0 past the consumers' PDL wait and barrier
  kWsTraceEnd = 5,            // thread 0: epilogue done (split-K: the tile's last block)
  kWsTraceGroup1Full = 6,     // warpgroup 1's thread 0: its wait for k-tile 0 returned
  kWsTraceOtherLoopDone = 7,  // main loop done in warpgroup 1 or 2 (whichever stored last)
  kWsTraceLoadIssue = 8,      // 8 + i: the producer is about to issue k-tile i's loads
  kWsTraceFull = 48,          // 48 + i: thread 0's full-barrier wait for k-tile i returned
  kWsTraceTileWaited = 88,    // 88 + i: its wait_group 1 after issuing k-tile i returned
  kWsTraceTileIssued = 168,   // 168 + i: its decode and wgmma issue of k-tile i are done
  kWsTraceReduced = 210,      // split-K: the tile's last block has reduced the partials
  kWsTraceSlots = 256,
};
// k-tiles with per-tile slots (kWsTraceLoadIssue + i etc.): the first 40 of a
// block's k-tiles.
constexpr int kWsTraceTiles = 40;
// Records in a trace buffer (1M words, 8 MiB): blocks at index 4096 or more
// are not traced.
constexpr int kWsTraceRecords = 4096;

static_assert(kWsTraceLoadIssue >= kWsTraceOtherLoopDone + 1 &&
                  kWsTraceLoadIssue + kWsTraceTiles <= kWsTraceFull &&
                  kWsTraceFull + kWsTraceTiles <= kWsTraceTileWaited &&
                  kWsTraceTileWaited + kWsTraceTiles <= kWsTraceTileIssued &&
                  kWsTraceTileIssued + kWsTraceTiles <= kWsTraceReduced &&
                  kWsTraceReduced < kWsTraceSlots,
              "trace slot ranges overlap");

// Traces every following ws launch of this MmaType (as int) into `buffer`
// (device memory, kWsTraceRecords * kWsTraceSlots words), or stops tracing
// when `buffer` is null. cudaErrorNotSupported when the build has no trace
// code (BITNET_GEMV_TRACE off).
cudaError_t SetWsTrace(unsigned long long* buffer, int mma_type);

}  // namespace bitnet::cuda_internal

#endif  // BITNET_KERNELS_CUDA_WS_TRACE_H_

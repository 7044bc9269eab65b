// Hopper (sm_90a) warp-specialized ternary GEMM: the large-batch path.
//
// Same math and operands as ternary_wgmma.cu (weights = wgmma A operand,
// decoded from the execution layout straight into registers; activations =
// B operand in 128-byte-swizzled shared memory), but the block is split by
// role so that the tensor cores never wait for address arithmetic or a
// block-wide barrier:
//  * one producer thread: it issues, per k-tile, one TMA
//    (cp.async.bulk.tensor) per 128-byte column block of activations (the
//    hardware swizzles and zero-fills columns past K; a last batch tile is
//    shifted back to end at M, so only a grid of one short tile reads rows
//    past M, also zero-filled) and
//    one 3-D TMA for the block's 4 or 6 KB of packed weights (8 or 12 row
//    groups of 512 bytes), all completing on the stage's "full" mbarrier;
//  * two or three consumer warpgroups (64 weight rows each, so 128- or
//    192-row weight tiles; see WsTraits): wait for "full", load
//    their 16-byte weight fragment, decode, issue the wgmmas of the tile,
//    keep one tile of wgmmas in flight, and release the previous tile's stage
//    on its "empty" mbarrier.
// Split-K and the epilogue are the shared ones (ternary_device.cuh) on a
// named barrier over the consumer threads; the _cs configurations instead
// run a tile's splits as one thread-block cluster and reduce them through
// distributed shared memory, each block finishing a share of the rows
// (ClusterSplitKReduce). With PDL (GemmParams::pdl) the
// producer sends the first stages' weights before waiting for the previous
// kernel, and the consumers wait before split-K and the epilogue. A build
// with BITNET_GEMV_TRACE records a per-block timeline (ws_trace.h).
#include <cuda.h>  // CUtensorMap and its enums (header only: no libcuda link)
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/ternary_device.cuh"
#include "kernels/cuda/ternary_launch.h"
#include "kernels/cuda/wgmma_util.cuh"
#include "kernels/cuda/ws_trace.h"

namespace bitnet::cuda_internal {
namespace {

// kCWG consumer warpgroups of 64 weight rows each: 2 (128-row tiles) or 3
// (192-row tiles, whose 3 x 128 consumer threads get 160 registers each:
// enough for int8 batch tiles up to 176 rows and fp16/bf16 up to 128 without
// spills or serialized wgmmas; fp16 A fragments take twice the registers, so
// the 176-row batch tile is int8 only). The third warpgroup keeps the tensor
// cores busy while the other two wait, decode and issue (session 11's trace:
// an int8 128 x 128 tile ran at 69 % of the tensor rate), and at N = 11008
// the 58 tiles of 192 rows fit two batch tiles in one wave where 86 tiles of
// 128 rows fit one.
template <MmaType kType, int kBN, int kCWG>
struct WsTraits {
  static constexpr int kConsumerWarps = 4 * kCWG;
  static constexpr int kConsumerThreads = kConsumerWarps * 32;
  // + a producer warpgroup: one thread issues the copies; the group exists
  // so that setmaxnreg can move its registers to the consumers (the
  // register budget is granted per warpgroup).
  static constexpr int kThreads = kConsumerThreads + 128;
  static constexpr int kProducerRegs = kCWG == 2 ? 40 : 24;
  // 256 x 232 + 128 x 40 <= 64K; 384 x 160 + 128 x 24 <= 64K.
  static constexpr int kConsumerRegs = kCWG == 2 ? 232 : 160;
  static_assert(kConsumerThreads * kConsumerRegs + 128 * kProducerRegs <= 65536,
                "register file");
  static constexpr int kBW = 64 * kCWG;                   // weight rows per block
  static constexpr int kBB = kBN;                         // batch rows per block
  static constexpr int kElemBytes = kType == MmaType::kS8 ? 1 : 2;
  static constexpr int kBoxCols = 128 / kElemBytes;  // elements per 128-byte column block
  static constexpr int kColBlocks = kElemBytes;      // column blocks per 128-element k-tile
  static constexpr int kColBlockBytes = kBN * 128;
  static constexpr int kActStageBytes = kColBlocks * kColBlockBytes;
  static constexpr int kWGroupBytes = 512;  // 16 weight rows x 128 columns, packed
  static constexpr int kWStageBytes = (kBW / 16) * kWGroupBytes;
  static constexpr int kStageBytes = kActStageBytes + kWStageBytes;
  static constexpr int kBarrierBytes = 256;
  static constexpr int kSmemLimit = 227 * 1024;  // sm_90 opt-in maximum per block
  static constexpr int kFit = (kSmemLimit - 1024 - kBarrierBytes) / kStageBytes;
  static constexpr int kStages = kFit > 8 ? 8 : kFit;
  static constexpr int kSteps = kType == MmaType::kS8 ? 4 : 8;
  static constexpr int kAccRegs = kBN / 2;  // m64 x kBN over 128 threads
  static constexpr int kEpiBytes = kBB * (kBW + 4) * 4;
  static constexpr int kPipeBytes = kStages * kStageBytes;
  static constexpr int kDataBytes = kPipeBytes > kEpiBytes ? kPipeBytes : kEpiBytes;
  static constexpr int kSmemBytes = kDataBytes + kBarrierBytes + 1024;  // + alignment slack
  static_assert(kStageBytes % 1024 == 0, "swizzle atoms need 1024-byte alignment");
  static_assert(kStages >= 3, "the pipeline keeps one tile of wgmmas in flight");
  static_assert(2 * kStages * 8 <= kBarrierBytes, "full + empty barriers per stage");
};

#ifdef BITNET_WGMMA_ENABLED
__device__ __forceinline__ void MbarInit(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}

__device__ __forceinline__ void MbarWait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}

__device__ __forceinline__ void MbarArrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

__device__ __forceinline__ void MbarArriveExpectTx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void TmaLoad2D(uint32_t dst, const CUtensorMap* map, int c0, int c1,
                                          uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}

__device__ __forceinline__ void TmaLoad3D(uint32_t dst, const CUtensorMap* map, int c0, int c1,
                                          int c2, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}

// Thread-block cluster barrier (every thread of every block in the cluster):
// arrive releases this thread's earlier shared-memory writes to the other
// blocks, wait acquires theirs. Split so that work can go between the two.
__device__ __forceinline__ void ClusterArrive() {
  asm volatile("barrier.cluster.arrive.release;\n" ::: "memory");
}

__device__ __forceinline__ void ClusterWait() {
  asm volatile("barrier.cluster.wait.acquire;\n" ::: "memory");
}

// The same shared-memory word of block `rank` of the cluster (distributed
// shared memory), 16 bytes at once.
__device__ __forceinline__ uint4 LdClusterShared128(uint32_t addr, int rank) {
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(addr), "r"(rank));
  uint4 v;
  asm volatile("ld.shared::cluster.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(remote)
               : "memory");
  return v;
}

// Split-K inside a cluster: the p.splits blocks of an output tile (cluster
// {1, 1, splits}, rank = blockIdx.z) have staged their raw accumulators in
// their own shared-memory tiles (kBW + 4 words per batch row); block z sums
// its share of the batch rows over every block's tile, in split order (as
// SplitKReduce: the same bits), into its own tile. Rows [*row_begin,
// *row_end) are then this block's to finish. The caller has passed the first
// cluster barrier (every tile staged) and arrives at the second after this
// (it must not exit before the others have read its tile).
template <int kBW, int kBB, int kThreads, typename T>
__device__ __forceinline__ void ClusterSplitKReduce(uint32_t* tile, int splits, int* row_begin,
                                                    int* row_end) {
  constexpr int kLd = kBW + 4;
  constexpr int kQuads = kBW / 4;  // 16-byte groups of a row's accumulators
  const int z = blockIdx.z;
  const int rows_per_split = (kBB + splits - 1) / splits;
  const int r0 = min(kBB, z * rows_per_split);
  const int r1 = min(kBB, r0 + rows_per_split);
  const uint32_t base = SmemAddr(tile);
  for (int i = threadIdx.x % kThreads; i < (r1 - r0) * kQuads; i += kThreads) {
    const int word = (r0 + i / kQuads) * kLd + (i % kQuads) * 4;
    // Every split's 16 bytes are requested before the first is summed: one
    // remote latency per group instead of one per split (session 26's trace:
    // 2.8-3.9 us from loop end to reduced rows).
    constexpr int kMaxSplits = 8;  // the launcher's limit (portable cluster size)
    uint4 v[kMaxSplits];
#pragma unroll
    for (int s = 0; s < kMaxSplits; ++s) {
      if (s < splits) v[s] = LdClusterShared128(base + word * 4, s);
    }
    T sum[4] = {T(0), T(0), T(0), T(0)};
#pragma unroll
    for (int s = 0; s < kMaxSplits; ++s) {
      if (s >= splits) break;
      const uint32_t bits[4] = {v[s].x, v[s].y, v[s].z, v[s].w};
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        if constexpr (std::is_same<T, float>::value) {
          sum[c] = sum[c] + __uint_as_float(bits[c]);
        } else {
          sum[c] = sum[c] + static_cast<T>(bits[c]);
        }
      }
    }
#pragma unroll
    for (int c = 0; c < 4; ++c) tile[word + c] = AccBits(sum[c]);
  }
  *row_begin = r0;
  *row_end = r1;
}

#endif

#ifdef BITNET_GEMV_TRACE
// Where the ws kernel's trace goes (ws_trace.h); in constant memory, as the
// gemv's (ternary_mma.cu), so that a trace point holds no register for the
// pointer.
__constant__ unsigned long long* g_ws_trace = nullptr;
__constant__ int g_ws_trace_type = -1;
#endif

// A point of the ws kernel's trace (ws_trace.h), stored by the calling
// thread; nothing without BITNET_GEMV_TRACE.
template <MmaType kType>
__device__ __forceinline__ void WsTracePoint(WsTraceSlot slot) {
#ifdef BITNET_GEMV_TRACE
  unsigned long long* t = g_ws_trace;
  const unsigned record = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  if (t == nullptr || g_ws_trace_type != static_cast<int>(kType) || record >= kWsTraceRecords) {
    return;
  }
  t += static_cast<size_t>(record) * kWsTraceSlots;
  unsigned long long now;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  t[slot] = now;
  if (slot == kWsTraceStart) {
    unsigned sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    t[kWsTraceSmId] = sm;
  }
#endif
}

// The point first_slot + tile of a per-k-tile range (only the first
// kWsTraceTiles k-tiles have slots).
template <MmaType kType>
__device__ __forceinline__ void WsTraceTilePoint(WsTraceSlot first_slot, int tile) {
  if (tile < kWsTraceTiles) WsTracePoint<kType>(static_cast<WsTraceSlot>(first_slot + tile));
}

// kClusterSplit: the splits of a tile run as one thread-block cluster and
// reduce through distributed shared memory (ClusterSplitKReduce), each block
// finishing a share of the tile's batch rows; otherwise through global
// partial sums and the last block (SplitKReduce).
template <MmaType kType, int kBN, int kCWG, bool kClusterSplit>
__global__ void __launch_bounds__(WsTraits<kType, kBN, kCWG>::kThreads, 1)
    ternary_wgmma_ws_kernel(const GemmParams p, const __grid_constant__ CUtensorMap act_map,
                            const __grid_constant__ CUtensorMap w_map) {
#ifdef BITNET_WGMMA_ENABLED
  using Tr = WsTraits<kType, kBN, kCWG>;
  constexpr int kStages = Tr::kStages;
  using T = AccType<kType>;
  extern __shared__ __align__(128) uint8_t smem_raw[];
  const uint32_t raw_base = SmemAddr(smem_raw);
  const uint32_t pad = ((raw_base + 1023) & ~1023u) - raw_base;
  uint8_t* smem = smem_raw + pad;
  const uint32_t smem_base = raw_base + pad;
  const uint32_t full_bar = smem_base + Tr::kDataBytes;  // kStages x 8 bytes
  const uint32_t empty_bar = full_bar + kStages * 8;

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int block_w0 = blockIdx.x * Tr::kBW;
  const int block_b0 = blockIdx.y * Tr::kBB;
  // A last batch tile with rows past M loads the kBB rows ending at M instead
  // (when M has that many): TMA boxes that reach past the activation tensor
  // map made the same grid up to 13 % slower (session 25, H200: N = 11008,
  // M = 288 int8 35.9 -> 31.3 us, fp16 54.5 -> 49.9; RESULTS.md). Such a block
  // stores all kBB rows; those it shares with the previous tile get the same
  // values twice (same x rows, weights, k order and split-K order).
  const int act_b0 = block_b0 + Tr::kBB > p.m && p.m >= Tr::kBB ? p.m - Tr::kBB : block_b0;
  const int kt0 = blockIdx.z * p.kt_per_split;
  const int nkt = min(p.kt_per_split, p.k_tiles - kt0);
  // With PDL the next kernel may launch now; this one loads its first
  // stages of weights before waiting for the previous one.
  PdlLaunchDependents();
  if (tid == 0) WsTracePoint<kType>(kWsTraceStart);

  if (tid == 0) {
#pragma unroll
    for (int s = 0; s < kStages; ++s) {
      MbarInit(full_bar + 8 * s, 1);                     // the producer's expect_tx arrive
      MbarInit(empty_bar + 8 * s, Tr::kConsumerThreads);  // one arrive per consumer thread
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (warp >= Tr::kConsumerWarps) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(Tr::kProducerRegs));
    // Producer. Stage s is refilled for tile i once the consumers released
    // tile i - kStages (empty barrier phase (i / kStages - 1) & 1).
    if (warp == Tr::kConsumerWarps && lane == 0) {
      asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&act_map))
                   : "memory");
      asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&w_map))
                   : "memory");
      // Stage `stage`'s barrier expects the whole stage; its weights (k-tile
      // kt of the block's row groups, one TMA) are sent here, its
      // activations by the loop below. (Eight 512-byte bulk copies per
      // k-tile, one per row group, measured slower: see LaunchWgmmaWs.)
      auto send_weights = [&](int stage, int kt) {
        const uint32_t bar = full_bar + 8 * stage;
        MbarArriveExpectTx(bar, Tr::kStageBytes);
        TmaLoad3D(smem_base + stage * Tr::kStageBytes + Tr::kActStageBytes, &w_map, 0, kt,
                  block_w0 / 16, bar);
      };
      // The weights of the first stages go out before the wait for the
      // previous kernel (they never depend on it).
      const int first = min(nkt, kStages);
      for (int i = 0; i < first; ++i) send_weights(i, kt0 + i);
      PdlWaitForPrerequisites();
      WsTracePoint<kType>(kWsTracePrerequisites);
      int stage = 0;
      uint32_t phase = 0;
      for (int i = 0; i < nkt; ++i) {
        if (i >= kStages) MbarWait(empty_bar + 8 * stage, phase ^ 1);
        const int kt = kt0 + i;
        WsTraceTilePoint<kType>(kWsTraceLoadIssue, i);
        if (i >= first) send_weights(stage, kt);
        const uint32_t bar = full_bar + 8 * stage;
        const uint32_t act = smem_base + stage * Tr::kStageBytes;
#pragma unroll
        for (int cb = 0; cb < Tr::kColBlocks; ++cb) {
          TmaLoad2D(act + cb * Tr::kColBlockBytes, &act_map, kt * 128 + cb * Tr::kBoxCols,
                    act_b0, bar);
        }
        if (++stage == kStages) {
          stage = 0;
          phase ^= 1;
        }
      }
    }
    // Cluster barriers count every thread of the cluster: the producer
    // warpgroup passes the consumers' two before it leaves. The producer
    // warp first reconverges: lanes waiting at the cluster barrier while
    // lane 0 still issues the loads hung or stalled the launch (run121).
    if (kClusterSplit && p.splits > 1) {
      __syncwarp();
      ClusterArrive();
      ClusterWait();
      ClusterArrive();
      ClusterWait();
    }
    return;  // takes no part in the consumers' named barriers
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(Tr::kConsumerRegs));
  // fp16/bf16: the epilogue's weight scales and bias are loaded now and wait
  // in registers through the main loop instead of costing a memory latency
  // after it (session 27, H200, two calls of two rounds: N = 4096, M = 64
  // 9.47 -> 9.12 us, N = 11008, M = 128 22.2 -> 21.3, 1 % at M = 256 / 512
  // and N = 11008, M = 64). Not in int8 mode (up to 3 % slower at N = 4096,
  // M = 256 / 512 in the first call) nor with the cluster split-K (N = 4096,
  // M = 128 fp16 10.83 -> 10.98): both load them in the epilogue as before.
  EpilogueColumns columns;
  const EpilogueColumns* preloaded = nullptr;
  if constexpr (kType != MmaType::kS8 && !kClusterSplit) {
    columns = LoadEpilogueColumns<Tr::kBW>(p, block_w0);
    preloaded = &columns;
  }
  // Consumers: warp w owns weight rows 16w..16w+15 of the block (warpgroup
  // w / 4 owns 64 rows), exactly the rows of its wgmma A fragment.
  T acc[Tr::kAccRegs];
#pragma unroll
  for (int i = 0; i < Tr::kAccRegs; ++i) acc[i] = T(0);

  // One tile of wgmmas in flight per warpgroup, so two register copies of
  // the decoded A fragments. (A second tile in flight would need a third
  // copy; 168 registers per thread, what ptxas allocates for 384 threads,
  // has no room for it with the larger accumulators.)
  uint32_t a_even[Tr::kSteps][4] = {};
  uint32_t a_odd[Tr::kSteps][4] = {};
  int stage = 0;
  uint32_t phase = 0;
  int prev_stage = -1;
  // Consumes the next stage: the block's k-tile number `tile` (which only the
  // trace points need).
  auto tile_step = [&](uint32_t (&a)[Tr::kSteps][4], uint32_t (&a_prev)[Tr::kSteps][4],
                       int tile) {
    MbarWait(full_bar + 8 * stage, phase);
    if (tid == 0) WsTraceTilePoint<kType>(kWsTraceFull, tile);
    if (tid == 128 && tile == 0) WsTracePoint<kType>(kWsTraceGroup1Full);
    const uint32_t act = smem_base + stage * Tr::kStageBytes;
    const uint4 wv = LdShared128(act + Tr::kActStageBytes + (warp * 32 + lane) * 16);
    DecodeAndIssueTile<kType, kBN, Tr::kColBlockBytes>(wv, a, acc, act);
    if (tid == 0) WsTraceTilePoint<kType>(kWsTraceTileIssued, tile);
    asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
    if (tid == 0) WsTraceTilePoint<kType>(kWsTraceTileWaited, tile);
    // The previous tile's wgmmas are done: its A registers may be reused and
    // its stage refilled.
    FenceRegs(a_prev);
    // Every consumer thread arrives itself (not one lane per warp after a
    // __syncwarp): each thread's own shared-memory reads of the stage are
    // then ordered before the refill by its own release, an edge
    // compute-sanitizer's racecheck follows (with one arrive per warp it
    // reported WAR hazards between these reads and the refill).
    if (prev_stage >= 0) MbarArrive(empty_bar + 8 * prev_stage);
    prev_stage = stage;
    if (++stage == kStages) {
      stage = 0;
      phase ^= 1;
    }
  };
  int i = 0;
  for (; i + 1 < nkt; i += 2) {
    tile_step(a_even, a_odd, i);
    tile_step(a_odd, a_even, i + 1);
  }
  if (i < nkt) tile_step(a_even, a_odd, i);
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  FenceRegs(a_even);
  FenceRegs(a_odd);
  WgmmaFenceOperand(acc);
  if ((tid & 127) == 0) WsTracePoint<kType>(tid == 0 ? kWsTraceLoopDone : kWsTraceOtherLoopDone);
  // Split-K scratch, row scales and y may belong to (or be read by) the
  // previous kernel: nothing below runs before it has completed.
  PdlWaitForPrerequisites();
  // Both warpgroups are done reading the pipeline before the epilogue reuses
  // its shared memory.
  ComputeSync<Tr::kConsumerThreads>();
  if (tid == 0) WsTracePoint<kType>(kWsTraceSynced);

  auto& acc3 = reinterpret_cast<T(&)[1][kBN / 8][4]>(acc);
  if (kClusterSplit && p.splits > 1) {
    uint32_t* tile = reinterpret_cast<uint32_t*>(smem);
    StageAccumulators<Tr::kBW>(acc3, tile, [&](int) { return warp * 16; },
                               [&](int j) { return j * 8; });
    ClusterArrive();
    ClusterWait();  // every split's tile is staged
    int r0 = 0, r1 = 0;
    ClusterSplitKReduce<Tr::kBW, Tr::kBB, Tr::kConsumerThreads, T>(tile, p.splits, &r0, &r1);
    ClusterArrive();  // done reading the other blocks' tiles
    if (tid == 0) WsTracePoint<kType>(kWsTraceReduced);
    const int rows = max(0, min(r1, p.m - act_b0) - r0);
    EpilogueFromTile<Tr::kBW, Tr::kConsumerThreads, Tr::kConsumerThreads, T>(
        p, tile + r0 * (Tr::kBW + 4), block_w0, act_b0 + r0, rows, preloaded);
    if (tid == 0) WsTracePoint<kType>(kWsTraceEnd);
    ClusterWait();  // no block reads this one's tile any more
    return;
  }
  if (p.splits > 1) {
    const int tile = blockIdx.x + gridDim.x * blockIdx.y;
    if (!SplitKReduce<T, Tr::kAccRegs, Tr::kConsumerThreads, Tr::kConsumerThreads>(acc, p, tile)) {
      return;
    }
    if (tid == 0) WsTracePoint<kType>(kWsTraceReduced);
  }
  Epilogue<Tr::kBW, Tr::kBB, Tr::kConsumerThreads, Tr::kConsumerThreads>(
      p, acc3, reinterpret_cast<float*>(smem), block_w0, act_b0,
      [&](int) { return warp * 16; }, [&](int j) { return j * 8; }, preloaded);
  if (tid == 0) WsTracePoint<kType>(kWsTraceEnd);
#else
  using Tr = WsTraits<kType, kBN, kCWG>;
  static_assert(Tr::kSteps > 0 && Tr::kAccRegs > 0, "traits are used by the sm_90a body");
  (void)act_map;
  (void)w_map;
  __trap();  // never launched: the host checks CudaDeviceHasWgmma first
#endif
}

// cuTensorMapEncodeTiled through the runtime's driver entry point, so the
// library keeps linking only the CUDA runtime.
using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                   const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                   const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                   CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

EncodeTiledFn GetEncodeTiled() {
  static const EncodeTiledFn fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                         &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      return static_cast<EncodeTiledFn>(nullptr);
    }
    return reinterpret_cast<EncodeTiledFn>(f);
  }();
  return fn;
}

template <MmaType kType, int kBN, int kCWG, bool kClusterSplit = false>
cudaError_t LaunchWgmmaWs(const GemmParams& p, dim3 grid, cudaStream_t stream) {
  using Tr = WsTraits<kType, kBN, kCWG>;
  const EncodeTiledFn encode = GetEncodeTiled();
  if (encode == nullptr) return cudaErrorNotSupported;
  // Activations [m rows, x_k_limit columns] with row pitch ldx elements; a
  // box is one 128-byte column block of kBN rows, swizzled as wgmma reads it.
  // Outside the tensor (rows >= m, columns >= x_k_limit) TMA writes zeros.
  CUtensorMap map;
  const CUtensorMapDataType dtype = kType == MmaType::kS8    ? CU_TENSOR_MAP_DATA_TYPE_UINT8
                                    : kType == MmaType::kF16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16
                                                             : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(p.x_k_limit), static_cast<cuuint64_t>(p.m)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(p.ldx) * Tr::kElemBytes};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(Tr::kBoxCols), static_cast<cuuint32_t>(kBN)};
  const cuuint32_t elem_strides[2] = {1, 1};
  if (encode(&map, dtype, 2, const_cast<void*>(p.x), dims, strides, box, elem_strides,
             CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS) {
    return cudaErrorInvalidValue;
  }
  // Packed weights [row groups][k_tiles][512 bytes] as 32-bit words: a box
  // is one k-tile of the block's row groups, landing in shared memory in
  // the order the consumers read it (group g at g x 512 bytes). The map
  // covers every group of the allocation (p.w_rows), and TMA zero-fills the
  // groups of a 192-row tile past them.
  CUtensorMap w_map;
  const int64_t w_groups = p.w_rows / 16;
  const cuuint64_t w_dims[3] = {static_cast<cuuint64_t>(Tr::kWGroupBytes / 4),
                                static_cast<cuuint64_t>(p.k_tiles),
                                static_cast<cuuint64_t>(w_groups)};
  const cuuint64_t w_strides[2] = {static_cast<cuuint64_t>(Tr::kWGroupBytes),
                                   static_cast<cuuint64_t>(p.k_tiles) * Tr::kWGroupBytes};
  const cuuint32_t w_box[3] = {static_cast<cuuint32_t>(Tr::kWGroupBytes / 4), 1,
                               static_cast<cuuint32_t>(Tr::kBW / 16)};
  const cuuint32_t w_elem_strides[3] = {1, 1, 1};
  if (encode(&w_map, CU_TENSOR_MAP_DATA_TYPE_UINT32, 3, const_cast<uint4*>(p.w), w_dims,
             w_strides, w_box, w_elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
             CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS) {
    return cudaErrorInvalidValue;
  }
  constexpr auto kernel = ternary_wgmma_ws_kernel<kType, kBN, kCWG, kClusterSplit>;
  const cudaError_t e = EnsureDynamicSmem<kernel>(Tr::kSmemBytes);
  if (e != cudaSuccess) return e;
  // With the cluster split, one cluster per output tile: its splits along z
  // (8 blocks at most, the portable cluster size).
  dim3 cluster(1, 1, 1);
  if (kClusterSplit && p.splits > 1) {
    if (p.splits > 8 || static_cast<int>(grid.z) != p.splits) return cudaErrorInvalidValue;
    cluster.z = static_cast<unsigned>(p.splits);
  }
  return LaunchInClustersWithOptionalPdl(kernel, grid, dim3(Tr::kThreads), Tr::kSmemBytes, stream,
                                         cluster, p.pdl, p, map, w_map);
}

// One configuration: kCWG consumer warpgroups (64 weight rows each) and a
// batch tile of BN rows, with launchers for every type or int8 only.
#define BITNET_WS_CONFIG(name, CWG, BN)                                              \
  GemmKernelInfo {                                                                    \
    name, 64 * CWG, BN, WsTraits<MmaType::kS8, BN, CWG>::kThreads, true, false, {   \
      &LaunchWgmmaWs<MmaType::kF16, BN, CWG>, &LaunchWgmmaWs<MmaType::kBF16, BN, CWG>, \
          &LaunchWgmmaWs<MmaType::kS8, BN, CWG>                                    \
    }, 1, true                                                                        \
  }
#define BITNET_WS_INT8_CONFIG(name, CWG, BN)                                         \
  GemmKernelInfo {                                                                    \
    name, 64 * CWG, BN, WsTraits<MmaType::kS8, BN, CWG>::kThreads, true, false, {   \
      nullptr, nullptr, &LaunchWgmmaWs<MmaType::kS8, BN, CWG>                       \
    }, 1, true                                                                        \
  }
// The same tiles with split-K reduced inside a thread-block cluster (the
// planner keeps such a grid to one wave of clusters: AutoConfig).
#define BITNET_WS_CLUSTER_CONFIG(name, CWG, BN)                                         \
  GemmKernelInfo {                                                                       \
    name, 64 * CWG, BN, WsTraits<MmaType::kS8, BN, CWG>::kThreads, true, false, {      \
      &LaunchWgmmaWs<MmaType::kF16, BN, CWG, true>, &LaunchWgmmaWs<MmaType::kBF16, BN, CWG, true>, \
          &LaunchWgmmaWs<MmaType::kS8, BN, CWG, true>                                   \
    }, 1, true, true                                                                     \
  }
}  // namespace

cudaError_t SetWsTrace(unsigned long long* buffer, int mma_type) {
#ifdef BITNET_GEMV_TRACE
  const cudaError_t e = cudaMemcpyToSymbol(g_ws_trace, &buffer, sizeof(buffer));
  if (e != cudaSuccess) return e;
  return cudaMemcpyToSymbol(g_ws_trace_type, &mma_type, sizeof(mma_type));
#else
  (void)buffer;
  (void)mma_type;
  return cudaErrorNotSupported;
#endif
}

// Warp-specialized configurations (ids follow kWgmmaKernels).
extern const GemmKernelInfo kWgmmaWsKernels[] = {
    BITNET_WS_CONFIG("ws_w128_b32", 2, 32),
    BITNET_WS_CONFIG("ws_w128_b64", 2, 64),
    BITNET_WS_CONFIG("ws_w128_b96", 2, 96),
    BITNET_WS_CONFIG("ws_w128_b128", 2, 128),
    BITNET_WS_CONFIG("ws_w128_b176", 2, 176),
    BITNET_WS_CONFIG("ws_w128_b256", 2, 256),
    // 192-row tiles in every type up to b128: at 160 registers ptxas fits
    // fp16/bf16 A fragments there without spills or serialized wgmmas.
    // Session 14 (H100, N = 11008, fp16): M = 256 ran 34.1-34.9 us against
    // 38.1-38.5 us for ws_w128_b96, M = 128 20.8-22.2 us (by machine) against
    // 22.0-22.1 us for ws_w128_b128 (ternary_cuda.cc, WideTile).
    BITNET_WS_CONFIG("ws_w192_b64", 3, 64),
    BITNET_WS_CONFIG("ws_w192_b128", 3, 128),
    // int8 only: at b176, fp16 A fragments would serialize the wgmmas.
    BITNET_WS_INT8_CONFIG("ws_w192_b176", 3, 176),
    // 128 x 64 tiles whose 2 splits reduce in a cluster of 2 (session 27, H200,
    // graph --pdl, N = 4096, M = 128: fp16 / int8 10.70 / 10.54 us against
    // 12.26 / 11.14 for ws_w128_b32 unsplit and 12.35 / 12.18 for ws_w128_b64
    // with the global split-K reduction; RESULTS.md, "Session 27").
    BITNET_WS_CLUSTER_CONFIG("ws_w128_b64_cs", 2, 64),
};
extern const int kWgmmaWsKernelCount = sizeof(kWgmmaWsKernels) / sizeof(kWgmmaWsKernels[0]);

}  // namespace bitnet::cuda_internal

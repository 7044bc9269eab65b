// mma.sync ternary GEMM (sm_80 and newer): weights are the A operand (16
// weight rows per fragment, decoded from the execution layout in registers),
// activations the B operand (8 batch rows per fragment, ldmatrix from
// swizzled shared memory). Both are fed by one cp.async multi-stage pipeline;
// weights travel packed (2 bits per weight) and are never stored decoded.
// Split-K over gridDim.z with an in-kernel deterministic reduction.
//
// Used for small batches (8..32 batch rows per block: the whole grid streams
// the packed weights at full bandwidth) and, off Hopper, for large ones.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/gemv_trace.h"
#include "kernels/cuda/ternary_device.cuh"
#include "kernels/cuda/ternary_launch.h"

namespace bitnet::cuda_internal {
namespace {

template <MmaType kType, int kWarpsN, int kWarpsM, int kRG, int kNT, int kSmemBudget>
struct MmaTraits {
  static constexpr int kThreads = kWarpsN * kWarpsM * 32;
  static constexpr int kBW = kWarpsN * kRG * 16;  // weight rows per block
  static constexpr int kBB = kWarpsM * kNT * 8;   // batch rows per block
  static constexpr int kElemBytes = kType == MmaType::kS8 ? 1 : 2;
  static constexpr int kRowBytes = 128 * kElemBytes;  // one k-tile of a batch row
  static constexpr int kChunks = kRowBytes / 16;
  static constexpr int kActStageBytes = kBB * kRowBytes;
  static constexpr int kWStageBytes = kBW * 32;  // 16 rows x 128 cols = 512 B
  static constexpr int kStageBytes = kActStageBytes + kWStageBytes;
  // As many stages as the budget holds (3..12): the deeper the pipeline, the
  // more bytes in flight to cover L2/DRAM latency.
  static constexpr int kStages = kSmemBudget / kStageBytes < 3    ? 3
                                 : kSmemBudget / kStageBytes > 12 ? 12
                                                                  : kSmemBudget / kStageBytes;
  static constexpr int kSteps = kType == MmaType::kS8 ? 4 : 8;  // mma k-steps per tile
  static constexpr int kEpiBytes = kBB * (kBW + 4) * 4;
  static constexpr int kPipeBytes = kStages * kStageBytes;
  static constexpr int kSmemBytes = kPipeBytes > kEpiBytes ? kPipeBytes : kEpiBytes;
  static_assert(kNT == 1 || kNT % 2 == 0, "n-tiles are loaded in pairs");
  static_assert(256 % kBW == 0, "block weight rows must divide the row padding (256)");
};

template <MmaType kType, int kWarpsN, int kWarpsM, int kRG, int kNT, int kSmemBudget>
__global__ void __launch_bounds__(kWarpsN* kWarpsM * 32)
    ternary_mma_kernel(const GemmParams p) {
  using Tr = MmaTraits<kType, kWarpsN, kWarpsM, kRG, kNT, kSmemBudget>;
  constexpr int kStages = Tr::kStages;
  using T = AccType<kType>;
  extern __shared__ __align__(128) uint8_t smem[];

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int warp_n = warp % kWarpsN;
  const int warp_m = warp / kWarpsN;
  const int block_w0 = blockIdx.x * Tr::kBW;
  const int block_b0 = blockIdx.y * Tr::kBB;
  const int kt0 = blockIdx.z * p.kt_per_split;
  const int nkt = min(p.kt_per_split, p.k_tiles - kt0);
  const uint32_t smem_base = SmemAddr(smem);

  const ActCopyPlan<Tr::kBB, Tr::kChunks, Tr::kThreads, Tr::kElemBytes> act_plan(
      p, block_b0, tid,
      [](int r, int c) { return static_cast<uint32_t>(r * Tr::kRowBytes + ((c ^ (r & 7)) << 4)); });
  const WeightCopyPlan<Tr::kBW, Tr::kThreads> w_plan(p, block_w0, tid);
  auto load_stage = [&](int stage, int kt) {
    const uint32_t act = smem_base + stage * Tr::kStageBytes;
    act_plan.Load(act, kt, p.x_k_limit);
    w_plan.Load(act + Tr::kActStageBytes, kt, tid);
  };

  T acc[kRG][kNT][4];
#pragma unroll
  for (int r = 0; r < kRG; ++r)
#pragma unroll
    for (int j = 0; j < kNT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[r][j][e] = T(0);

  const int mi = lane >> 3;  // ldmatrix: which 8x8 matrix this lane addresses
  const int ri = lane & 7;   // and which of its rows

  auto compute = [&](int stage) {
    const uint32_t act = smem_base + stage * Tr::kStageBytes;
    const uint32_t wst = act + Tr::kActStageBytes;
    uint4 wv[kRG];
#pragma unroll
    for (int r = 0; r < kRG; ++r) {
      wv[r] = LdShared128(wst + ((warp_n * kRG + r) * 32 + lane) * 16);
    }
    StaticFor<0, Tr::kSteps>([&](auto s_const) {
      constexpr int S = decltype(s_const)::value;
      uint32_t a[kRG][4];
#pragma unroll
      for (int r = 0; r < kRG; ++r) DecodeStep<kType, S>(wv[r], a[r]);
      uint32_t b[kNT][2];
      if constexpr (kNT == 1) {
        const int row = warp_m * 8 + ri;
        const int chunk = 2 * S + (mi & 1);
        uint32_t rr[2];
        LdMatrixX2(rr, act + row * Tr::kRowBytes + ((chunk ^ ri) << 4));
        b[0][0] = rr[0];
        b[0][1] = rr[1];
      } else {
#pragma unroll
        for (int j = 0; j < kNT; j += 2) {
          const int row = (warp_m * kNT + j + (mi >> 1)) * 8 + ri;
          const int chunk = 2 * S + (mi & 1);
          uint32_t rr[4];
          LdMatrixX4(rr, act + row * Tr::kRowBytes + ((chunk ^ ri) << 4));
          b[j][0] = rr[0];
          b[j][1] = rr[1];
          b[j + 1][0] = rr[2];
          b[j + 1][1] = rr[3];
        }
      }
#pragma unroll
      for (int r = 0; r < kRG; ++r)
#pragma unroll
        for (int j = 0; j < kNT; ++j) {
          if constexpr (kType == MmaType::kS8) {
            Mma(acc[r][j], a[r], b[j]);
          } else {
            Mma<kType>(acc[r][j], a[r], b[j]);
          }
        }
    });
  };

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nkt) load_stage(s, kt0 + s);
    CpAsyncCommit();
  }
  for (int i = 0; i < nkt; ++i) {
    CpAsyncWait<kStages - 2>();
    __syncthreads();
    const int nx = i + kStages - 1;
    if (nx < nkt) load_stage(nx % kStages, kt0 + nx);
    CpAsyncCommit();
    compute(i % kStages);
  }
  CpAsyncWait<0>();
  __syncthreads();

  if (p.splits > 1) {
    const int tile = blockIdx.x + gridDim.x * blockIdx.y;
    constexpr int kRegs = kRG * kNT * 4;
    if (!SplitKReduce<T, kRegs, Tr::kThreads>(reinterpret_cast<T(&)[kRegs]>(acc), p, tile)) {
      return;
    }
  }
  Epilogue<Tr::kBW, Tr::kBB, Tr::kThreads>(
      p, acc, reinterpret_cast<float*>(smem), block_w0, block_b0,
      [&](int r) { return (warp_n * kRG + r) * 16; },
      [&](int j) { return (warp_m * kNT + j) * 8; });
}

template <MmaType kType, int kWarpsN, int kWarpsM, int kRG, int kNT, int kSmemBudget>
cudaError_t LaunchMma(const GemmParams& p, dim3 grid, cudaStream_t stream) {
  using Tr = MmaTraits<kType, kWarpsN, kWarpsM, kRG, kNT, kSmemBudget>;
  constexpr auto kernel = ternary_mma_kernel<kType, kWarpsN, kWarpsM, kRG, kNT, kSmemBudget>;
  // Always (cached per device): dynamic plus static shared memory may cross
  // the 48 KB default even when the dynamic part alone does not.
  const cudaError_t e = EnsureDynamicSmem<kernel>(Tr::kSmemBytes);
  if (e != cudaSuccess) return e;
  kernel<<<grid, Tr::kThreads, Tr::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}


// ---------------------------------------------------------------------------
// Small batches (M <= 8 * kNT per block row): one memory latency, not a
// pipeline. Each block owns 32 weight rows (2 row groups) and the whole K;
// its 8 warps split K (warp w takes k-tiles w, w + 8, ...). Every warp first
// issues all its weight loads for a pass of 32 k-tiles straight from global
// memory into registers (8 x LDG.128 per lane: the whole matrix is in flight
// at once across the grid), the activations for those k-tiles are staged in
// swizzled shared memory meanwhile (by each warp for its own k-tiles when a
// pass fits at once, so no block barrier), then each warp decodes and
// runs its mma.syncs; partial sums are reduced across warps in shared memory
// (fixed order: deterministic) and the epilogue stores directly. No split-K
// round trips through global memory.
// Launched with PDL (GemmParams::pdl, dependent_launch.cuh), the kernel
// starts while the previous kernel on the stream still runs: the first
// pass's weight loads go out at once, and only the x staging, the epilogue's
// row scales and the stores of y wait for the previous kernel to finish.
// kRG 16-row groups per block, kWarps warps splitting K. Decoding is the
// bulk of the instructions; many warps per SM (16 rows x 16 warps) keep the
// schedulers busy, fewer larger blocks (32 rows x 8 warps) suit large N.
template <MmaType kType, int kNT, int kRowGroups, int kWarpCount, int kBlocksPerSm,
          int kXGroupsPerKt, int kLateWeightTiles>
struct GemvTraits {
  static constexpr int kRG = kRowGroups;
  static constexpr int kWarps = kWarpCount;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kBW = kRG * 16;
  static constexpr int kBB = kNT * 8;
  static constexpr int kKtPerWarp = 32 / kWarps;  // weight tiles held in registers per pass
  static constexpr int kPassKt = kWarps * kKtPerWarp;
  static constexpr int kElemBytes = kType == MmaType::kS8 ? 1 : 2;
  static constexpr int kElemsPerChunk = 16 / kElemBytes;
  static constexpr int kRowBytes = 128 * kElemBytes;  // one k-tile of a batch row
  static constexpr int kChunks = kRowBytes / 16;
  // Stage the whole pass when it fits in this block's share of shared memory
  // (64 KB at two blocks per SM, 128 KB at one), else half of it at a time.
  static constexpr int kXStageLimit = (kBlocksPerSm == 1 ? 128 : 64) * 1024;
  static constexpr int kChunkKt = kBB * kRowBytes * kPassKt <= kXStageLimit ? kPassKt : kPassKt / 2;
  static constexpr int kXRowStride = kChunkKt * kRowBytes;
  static constexpr int kXBytes = kBB * kXRowStride;
  static constexpr int kRegs = kRG * kNT * 4;
  // A second accumulator set (odd k-tiles of the warp) halves the chain of
  // dependent MMAs. From 6 tiles of 16 x 8 per warp on, the chains are
  // independent enough without it, and its registers made ptxas spill:
  // gemv_w48_b16 spilled 64-68 bytes with it, none without, and N = 11008,
  // M = 16 went from 13.29-13.34 to 12.00-12.04 us in fp16 mode and from
  // 10.95-10.98 to 10.03-10.17 in int8 mode (session 19, H100, graph --pdl).
  static constexpr bool kTwoAcc = kRG * kNT < 6;
  static constexpr int kRedBytes = kWarps * kRegs * 32 * 4;
  static_assert(kChunkKt % kWarps == 0, "each chunk holds whole rounds of k-tiles");
  static_assert(32 % kWarps == 0, "a pass is 32 k-tiles");
  static constexpr int kSmemBytes = kXBytes > kRedBytes ? kXBytes : kRedBytes;
  static constexpr int kSteps = kType == MmaType::kS8 ? 4 : 8;
  // The whole pass is staged at once: each warp can stage (and wait for)
  // just its own k-tiles' columns of x (no block barrier before the MMAs).
  static constexpr bool kWarpLocalX = kChunkKt == kPassKt;
  // Warp-local staging in kXSplit cp.async groups per k-tile (0: one group
  // for the whole pass); the warp waits for each group just before the
  // k-steps that read it. Chosen per configuration and mode by measurement
  // (kMmaKernels below).
  static constexpr int kXSplit = kXGroupsPerKt;
  static constexpr bool kGroupedX = kWarpLocalX && kXSplit > 0;
  static constexpr int kStepsPerGroup = kXSplit > 0 ? kSteps / kXSplit : kSteps;
  static_assert(kStepsPerGroup * (kXSplit > 0 ? kXSplit : 1) == kSteps, "whole k-steps per group");
  static_assert(kKtPerWarp * kXSplit <= 8, "CpAsyncWaitPending counts up to 7 groups in flight");
  // The first pass's weights of the warp's last kLateW k-tiles are loaded
  // after its x copies are issued, not before the PDL wait with the others:
  // x then does not queue in DRAM behind them. Chosen per configuration and
  // mode by measurement (kMmaKernels below); 0 keeps every load before the
  // wait.
  static constexpr int kLateW = kLateWeightTiles;
  static_assert(kLateW >= 0 && kLateW < kKtPerWarp, "at least one k-tile loads before the wait");
  // k-steps of the warp's first k-tile decoded while x is still being
  // staged: as many as fit in 16 registers (more spilled in gemv_w16_b8),
  // none where the accumulators already crowd the registers (48 x 16).
  static constexpr int kEarlySteps = kRG * kNT > 4 ? 0 : 4 / kRG < kSteps ? 4 / kRG : kSteps;
  // Shared memory a launch needs when only `rows` (1..kBB) batch rows of a
  // tile are real: only those rows are staged (the ldmatrix reads of the
  // others are clamped to the last real row), so at M = 1 a block takes 8 KB
  // instead of 64 and shared memory never limits the blocks per SM there.
  static constexpr int SmemBytesFor(int rows) {
    const int x = rows * kXRowStride;
    return x > kRedBytes ? x : kRedBytes;
  }
};

#ifdef BITNET_GEMV_TRACE
// Where the gemv's trace goes (gemv_trace.h); in constant memory, so that a
// trace point costs no register for the pointer (a register-held pointer
// made gemv_w48_b16 spill; a volatile global load per point made an M = 1
// launch 2.7x slower).
__constant__ unsigned long long* g_gemv_trace = nullptr;
__constant__ int g_gemv_trace_type = -1;
#endif

// A point of the gemv's trace (gemv_trace.h); nothing without
// BITNET_GEMV_TRACE.
template <MmaType kType, int kWarps>
__device__ __forceinline__ void GemvTracePoint(int warp, int lane, GemvTraceSlot slot) {
#ifdef BITNET_GEMV_TRACE
  unsigned long long* t = g_gemv_trace;
  if (t == nullptr || lane != 0 || g_gemv_trace_type != static_cast<int>(kType)) return;
  t += ((blockIdx.y * gridDim.x + blockIdx.x) * kWarps + warp) * kGemvTraceSlots;
  unsigned long long now;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  t[slot] = now;
  if (slot == kTraceStart) {
    unsigned sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    t[kTraceSmId] = sm;
  }
#endif
}

template <MmaType kType, int kNT, int kRG, int kWarps, int kBlocksPerSm, int kXSplit, int kLateW>
__global__ void __launch_bounds__(kWarps * 32, kBlocksPerSm)
    ternary_gemv_kernel(const GemmParams p) {
  using Tr = GemvTraits<kType, kNT, kRG, kWarps, kBlocksPerSm, kXSplit, kLateW>;
  using T = AccType<kType>;
  extern __shared__ __align__(128) uint8_t smem[];
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int block_w0 = blockIdx.x * Tr::kBW;
  const int block_b0 = blockIdx.y * Tr::kBB;
  const uint32_t smem_base = SmemAddr(smem);
  const char* x = static_cast<const char*>(p.x);
  const uint4* wrow = p.w + static_cast<int64_t>(block_w0 / 16) * p.k_tiles * 32 + lane;
  const int mi = lane >> 3;
  const int ri = lane & 7;
  // Last staged row of this block (rows past the batch are not staged; the
  // shared memory holds only the launch's real rows, see SmemBytesFor).
  const int last_row = max(0, min(Tr::kBB, p.m - block_b0) - 1);
  auto trace = [&](GemvTraceSlot slot) { GemvTracePoint<kType, kWarps>(warp, lane, slot); };
  trace(kTraceStart);

  // The next kernel on the stream may launch now and prefetch its own
  // weights; it still waits for this grid to complete before reading y.
  PdlLaunchDependents();

  // x into the L2 ahead of the weight loads below (PrefetchToL2: legal
  // before the wait). Each line of the batch tile's rows once over the
  // tile's blocks: lane l of block b takes lines b + G * (l + 32 i). The
  // blocks land only as the previous launch's leave, so this gains little
  // (fp16, H200, graph --pdl, three rounds, session 24: N = 4096, M = 8 /
  // 16 3.72 / 4.96 -> 3.65 / 4.92 us; M = 1 and N = 11008 unchanged). int8
  // x is the preparation launch's output, written just before: not here.
  if constexpr (kType != MmaType::kS8) {
    if (warp == 0) {
      const int rows = min(Tr::kBB, p.m - block_b0);
      const int lines_per_row = static_cast<int>((p.x_k_limit * Tr::kElemBytes + 127) / 128);
      for (int t = lane * gridDim.x + blockIdx.x; t < rows * lines_per_row; t += 32 * gridDim.x) {
        const int r = t / lines_per_row;
        PrefetchToL2(x + static_cast<int64_t>(block_b0 + r) * p.ldx * Tr::kElemBytes +
                     static_cast<int64_t>(t - r * lines_per_row) * 128);
      }
    }
  }

  // The outputs this thread stores after the cross-warp reduction (entries
  // tid, tid + kThreads, ... of the block's kRegs x 32 accumulators), and
  // their epilogue operands, loaded now: ncu showed the epilogue's first
  // FMUL waiting a full memory latency for w_scale when it loaded them last.
  // Weight scales and bias come with the weights (not from the previous
  // kernel); row scales after the PDL wait below.
  constexpr int kOuts = (Tr::kRegs * 32 + Tr::kThreads - 1) / Tr::kThreads;
  int out_m[kOuts];
  int out_n[kOuts];
  float out_ws[kOuts];
  float out_bias[kOuts];
  float out_rs[kOuts];
#pragma unroll
  for (int o = 0; o < kOuts; ++o) {
    const int idx = tid + o * Tr::kThreads;
    const int reg = idx >> 5;
    const int ln = idx & 31;
    // reg = (r * kNT + j) * 4 + e, lane ln = 4 g + t (mma C-fragment order).
    const int e = reg & 3;
    const int j = (reg >> 2) % kNT;
    const int r = (reg >> 2) / kNT;
    const bool valid = idx < Tr::kRegs * 32;
    out_n[o] = valid ? block_w0 + r * 16 + (ln >> 2) + 8 * (e >> 1) : p.n;
    out_m[o] = valid ? block_b0 + j * 8 + 2 * (ln & 3) + (e & 1) : p.m;
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

  // Two accumulator sets (even / odd k-tile of the warp) halve the chain of
  // dependent MMAs; acc2 stays unused (and is folded away) without
  // Tr::kTwoAcc.
  T acc[Tr::kRG][kNT][4];
  T acc2[Tr::kRG][kNT][4];
#pragma unroll
  for (int r = 0; r < Tr::kRG; ++r)
#pragma unroll
    for (int j = 0; j < kNT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        acc[r][j][e] = T(0);
        acc2[r][j][e] = T(0);
      }

  for (int pass_kt0 = 0; pass_kt0 < p.k_tiles; pass_kt0 += Tr::kPassKt) {
    uint4 wv[Tr::kRG][Tr::kKtPerWarp];
    auto load_weights = [&](int i) {
      const int kt = pass_kt0 + warp + Tr::kWarps * i;
#pragma unroll
      for (int r = 0; r < Tr::kRG; ++r) {
        // Row groups past n are skipped: with 48-row blocks the last block
        // may reach beyond the 256-row padding of the weights.
        wv[r][i] = kt < p.k_tiles && block_w0 + 16 * r < p.n
                       ? __ldg(wrow + (static_cast<int64_t>(r) * p.k_tiles + kt) * 32)
                       : make_uint4(0, 0, 0, 0);
      }
    };
#pragma unroll
    for (int i = 0; i < Tr::kKtPerWarp; ++i) {
      if (pass_kt0 != 0 || i < Tr::kKtPerWarp - Tr::kLateW) load_weights(i);
    }
    // Weights never come from the previous kernel: the first pass's loads
    // above (all but the last kLateW k-tiles', which follow the x copies) are
    // in flight while this waits for it. Everything below (x, row_scale, y)
    // is ordered after the wait; later passes need no further wait.
    if (pass_kt0 == 0) {
      trace(kTraceWeightsIssued);
      PdlWaitForPrerequisites();
      trace(kTracePrerequisites);
      load_row_scales();
    }
#pragma unroll
    for (int chunk = 0; chunk < Tr::kPassKt / Tr::kChunkKt; ++chunk) {
      const int ckt0 = pass_kt0 + chunk * Tr::kChunkKt;
      if (ckt0 >= p.k_tiles) break;
      if constexpr (Tr::kWarpLocalX) {
        // Each warp stages only the x columns of its own k-tiles and reads
        // only those: no block-wide barrier, a warp whose copies have landed
        // starts at once. With kXSplit > 0, in kXSplit cp.async groups per
        // k-tile, in the order its MMAs read them: the warp starts on its
        // first k-steps while the rest still arrive (at M = 16 an SM takes
        // in 128 KB of x per launch). Lane q copies chunk q % kPartChunks of
        // the group's part of row q / kPartChunks, 32 chunks at a time. With
        // kXSplit = 0, one group for the warp's whole pass, row by row (lane
        // q copies chunk q % kChunks of k-tile q / kChunks of the warp):
        // fewer live addresses, which gemv_w48_b16 needs in int8 mode.
        __syncwarp();  // this warp's reads of the previous pass are done
        if constexpr (Tr::kXSplit > 0) {
          constexpr int kPartChunks = Tr::kChunks / Tr::kXSplit;  // per row and group
          constexpr int kGroupChunks = Tr::kBB * kPartChunks;
          static_assert(kGroupChunks % 32 == 0 || 32 % kGroupChunks == 0, "whole sweeps");
#pragma unroll
          for (int g = 0; g < Tr::kKtPerWarp * Tr::kXSplit; ++g) {
            const int ktl = warp + Tr::kWarps * (g / Tr::kXSplit);
            const int kt = ckt0 + ktl;
#pragma unroll
            for (int it = 0; it < (kGroupChunks + 31) / 32; ++it) {
              const int q = lane + 32 * it;
              if (q >= kGroupChunks) continue;  // groups of fewer than 32 chunks
              const int r = q / kPartChunks;
              const int c = (g % Tr::kXSplit) * kPartChunks + q % kPartChunks;
              if (block_b0 + r >= p.m) continue;  // rows past the batch are not staged
              const int64_t elem = static_cast<int64_t>(ktl) * 128 + c * Tr::kElemsPerChunk;
              const bool pred =
                  kt < p.k_tiles && static_cast<int64_t>(ckt0) * 128 + elem < p.x_k_limit;
              const char* src = x + (static_cast<int64_t>(block_b0 + r) * p.ldx +
                                     static_cast<int64_t>(ckt0) * 128 + elem) * Tr::kElemBytes;
              const int rem = ktl * Tr::kChunks + c;
              CpAsync16(smem_base + r * Tr::kXRowStride + ((rem ^ (r & 7)) << 4),
                        pred ? src : x, pred);
            }
            CpAsyncCommit();
          }
        } else {
          constexpr int kPerRow = Tr::kKtPerWarp * Tr::kChunks;
          constexpr int kRowsPerSweep = kPerRow >= 32 ? 1 : 32 / kPerRow;
          constexpr int kIters = kPerRow >= 32 ? kPerRow / 32 : 1;
          static_assert(kPerRow % 32 == 0 || 32 % kPerRow == 0, "whole sweeps per row");
          const int col = kPerRow >= 32 ? lane : lane % kPerRow;
          const int r_sub = kPerRow >= 32 ? 0 : lane / kPerRow;
#pragma unroll
          for (int r = r_sub; r < Tr::kBB; r += kRowsPerSweep) {
            if (block_b0 + r >= p.m) break;
            const char* row = x + (static_cast<int64_t>(block_b0 + r) * p.ldx +
                                   static_cast<int64_t>(ckt0) * 128) * Tr::kElemBytes;
#pragma unroll
            for (int it = 0; it < kIters; ++it) {
              const int idx = col + 32 * it;
              const int c = idx % Tr::kChunks;
              const int ktl = warp + Tr::kWarps * (idx / Tr::kChunks);
              const int kt = ckt0 + ktl;
              const int64_t elem = static_cast<int64_t>(ktl) * 128 + c * Tr::kElemsPerChunk;
              const bool pred =
                  kt < p.k_tiles && static_cast<int64_t>(ckt0) * 128 + elem < p.x_k_limit;
              const int rem = ktl * Tr::kChunks + c;
              CpAsync16(smem_base + r * Tr::kXRowStride + ((rem ^ (r & 7)) << 4),
                        pred ? row + elem * Tr::kElemBytes : x, pred);
            }
          }
          CpAsyncCommit();
        }
      } else {
        __syncthreads();  // the previous chunk's shared memory reads are done
        // Thread tid stages chunk (tid % kChunks) of k-tiles tid / kChunks +
        // j * (kThreads / kChunks) of every valid row: addresses are a row
        // base plus constants. Rows past the batch are not staged: they only
        // feed accumulator columns that are never stored.
        constexpr int kCols = Tr::kChunkKt * Tr::kChunks;
        // Threads cover kRowsPerSweep rows at a time (1 when a row has at
        // least kThreads chunks).
        constexpr int kRowsPerSweep = kCols >= Tr::kThreads ? 1 : Tr::kThreads / kCols;
        constexpr int kColThreads = Tr::kThreads / kRowsPerSweep;
        constexpr int kKtPerSweep = kColThreads / Tr::kChunks;
        static_assert(kCols % kColThreads == 0, "whole sweeps per staged row");
        const int col_tid = tid % kColThreads;
        const int r_sub = tid / kColThreads;
        const int c = col_tid % Tr::kChunks;
        const int kt_of_tid = col_tid / Tr::kChunks;
        const int64_t c_elem = c * Tr::kElemsPerChunk;
#pragma unroll
        for (int r = r_sub; r < Tr::kBB; r += kRowsPerSweep) {
          if (block_b0 + r >= p.m) break;
          const char* row =
              x + (static_cast<int64_t>(block_b0 + r) * p.ldx + static_cast<int64_t>(ckt0) * 128 +
                   c_elem) * Tr::kElemBytes;
#pragma unroll
          for (int j = 0; j < kCols / kColThreads; ++j) {
            const int ktl = kt_of_tid + j * kKtPerSweep;
            const int kt = ckt0 + ktl;
            const bool pred =
                kt < p.k_tiles && static_cast<int64_t>(kt) * 128 + c_elem < p.x_k_limit;
            const int rem = ktl * Tr::kChunks + c;
            CpAsync16(smem_base + r * Tr::kXRowStride + ((rem ^ (r & 7)) << 4),
                      pred ? row + static_cast<int64_t>(ktl) * 128 * Tr::kElemBytes : x, pred);
          }
        }
        CpAsyncCommit();
      }
      if (pass_kt0 == 0 && chunk == 0) trace(kTraceXIssued);
      if constexpr (Tr::kLateW > 0) {
        if (pass_kt0 == 0 && chunk == 0) {
#pragma unroll
          for (int i = Tr::kKtPerWarp - Tr::kLateW; i < Tr::kKtPerWarp; ++i) load_weights(i);
        }
      }
      // The A fragments of the warp's first k-tile do not depend on x: decode
      // them while its copies are in flight (ncu, session 10: at M = 1 the
      // block waits for x after its weights have arrived).
      uint32_t early[Tr::kEarlySteps > 0 ? Tr::kEarlySteps : 1][Tr::kRG][4];
      if constexpr (Tr::kEarlySteps > 0) {
        if (chunk == 0) {
          StaticFor<0, Tr::kEarlySteps>([&](auto s_const) {
            constexpr int S = decltype(s_const)::value;
#pragma unroll
            for (int r = 0; r < Tr::kRG; ++r) DecodeStep<kType, S>(wv[r][0], early[S][r]);
          });
        }
      }
      if constexpr (!Tr::kGroupedX) {
        CpAsyncWait<0>();
        if constexpr (Tr::kWarpLocalX) {
          __syncwarp();  // the other lanes' copies of this warp's columns
        } else {
          __syncthreads();
        }
        if (pass_kt0 == 0 && chunk == 0) trace(kTraceXLanded);
      }
#pragma unroll
      for (int i = 0; i < Tr::kKtPerWarp; ++i) {
        // k-tile warp + 8 i lies in this chunk iff i / (kChunkKt / 8) == chunk.
        if (i / (Tr::kChunkKt / Tr::kWarps) != chunk) continue;
        const int kt = pass_kt0 + warp + Tr::kWarps * i;
        if (kt >= p.k_tiles) continue;
        const int ktl = kt - ckt0;
        StaticFor<0, Tr::kSteps>([&](auto s_const) {
          constexpr int S = decltype(s_const)::value;
          if constexpr (Tr::kGroupedX && S % Tr::kStepsPerGroup == 0) {
            // The group of these k-steps has landed (later ones may still
            // fly), including the other lanes' copies.
            const int g = i * Tr::kXSplit + S / Tr::kStepsPerGroup;
            CpAsyncWaitPending(Tr::kKtPerWarp * Tr::kXSplit - 1 - g);
            __syncwarp();
          }
          uint32_t a[Tr::kRG][4];
#pragma unroll
          for (int r = 0; r < Tr::kRG; ++r) {
            if (S < Tr::kEarlySteps && i == 0) {
#pragma unroll
              for (int e = 0; e < 4; ++e) a[r][e] = early[S < Tr::kEarlySteps ? S : 0][r][e];
            } else {
              DecodeStep<kType, S>(wv[r][i], a[r]);
            }
          }
          uint32_t b[kNT][2];
          const int chunk16 = ktl * Tr::kChunks + 2 * S + (mi & 1);
          // Rows past the batch read the last real row instead: they only
          // feed accumulator columns that are never stored.
          if constexpr (kNT == 1) {
            uint32_t rr[2];
            const int row = min(ri, last_row);
            LdMatrixX2(rr, smem_base + row * Tr::kXRowStride + ((chunk16 ^ (row & 7)) << 4));
            b[0][0] = rr[0];
            b[0][1] = rr[1];
          } else {
#pragma unroll
            for (int j = 0; j < kNT; j += 2) {
              const int row = min((j + (mi >> 1)) * 8 + ri, last_row);
              uint32_t rr[4];
              LdMatrixX4(rr, smem_base + row * Tr::kXRowStride + ((chunk16 ^ (row & 7)) << 4));
              b[j][0] = rr[0];
              b[j][1] = rr[1];
              b[j + 1][0] = rr[2];
              b[j + 1][1] = rr[3];
            }
          }
#pragma unroll
          for (int r = 0; r < Tr::kRG; ++r)
#pragma unroll
            for (int j = 0; j < kNT; ++j) {
              auto& c = (Tr::kTwoAcc && (i & 1)) ? acc2[r][j] : acc[r][j];
              if constexpr (kType == MmaType::kS8) {
                Mma(c, a[r], b[j]);
              } else {
                Mma<kType>(c, a[r], b[j]);
              }
            }
        });
        if (pass_kt0 == 0 && i < 4) trace(static_cast<GemvTraceSlot>(kTraceKTileDone + i));
      }
    }
  }
#pragma unroll
  for (int r = 0; r < Tr::kRG; ++r)
#pragma unroll
    for (int j = 0; j < kNT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[r][j][e] = acc[r][j][e] + acc2[r][j][e];
  // No pass ran (k_tiles is >= 1 for any CudaTernaryWeights, so never in
  // practice): still no store of y before the previous kernel is done.
  if (p.k_tiles <= 0) {
    PdlWaitForPrerequisites();
    load_row_scales();
  }

  // Cross-warp reduction in shared memory, in warp order (deterministic).
  // It reuses the staging area: copies for k-tiles past K (zero-filled,
  // never read, so never waited for) must land first.
  CpAsyncWait<0>();
  __syncthreads();
  T* red = reinterpret_cast<T*>(smem);
  const T* flat = &acc[0][0][0];
#pragma unroll
  for (int r = 0; r < Tr::kRegs; ++r) red[(warp * Tr::kRegs + r) * 32 + lane] = flat[r];
  __syncthreads();
  trace(kTraceReduced);
  WithEpilogueKind<T>(p, [&](auto act_c, auto out_c, auto small_acc_c) {
    constexpr Act kAct = decltype(act_c)::value;
    constexpr OutType kOut = decltype(out_c)::value;
    constexpr bool kSmallAcc = decltype(small_acc_c)::value;
#pragma unroll
    for (int o = 0; o < kOuts; ++o) {
      const int idx = tid + o * Tr::kThreads;
      if (out_m[o] >= p.m || out_n[o] >= p.n) continue;  // also idx past the accumulators
      const int reg = idx >> 5;
      const int ln = idx & 31;
      T sum = T(0);
#pragma unroll
      for (int w = 0; w < Tr::kWarps; ++w) sum = sum + red[(w * Tr::kRegs + reg) * 32 + ln];
      const int64_t off = static_cast<int64_t>(out_m[o]) * p.ldy + out_n[o];
      if constexpr (kOut == OutType::kS32) {
        StoreOutput<kOut>(p.y, off, __int_as_float(static_cast<int>(sum)));
      } else {
        StoreOutput<kOut>(p.y, off,
                          EpilogueValueFrom<T, kAct, kSmallAcc>(sum, out_ws[o], out_bias[o],
                                                                out_rs[o]));
      }
    }
  });
  trace(kTraceEnd);
}

template <MmaType kType, int kNT, int kRG, int kWarps, int kBlocksPerSm, int kXSplit, int kLateW>
cudaError_t LaunchGemv(const GemmParams& p, dim3 grid, cudaStream_t stream) {
  using Tr = GemvTraits<kType, kNT, kRG, kWarps, kBlocksPerSm, kXSplit, kLateW>;
  constexpr auto kernel =
      ternary_gemv_kernel<kType, kNT, kRG, kWarps, kBlocksPerSm, kXSplit, kLateW>;
  const cudaError_t e = EnsureDynamicSmem<kernel>(Tr::kSmemBytes);
  if (e != cudaSuccess) return e;
  const int rows = std::clamp(p.m, 1, Tr::kBB);
  return LaunchWithOptionalPdl(kernel, grid, dim3(Tr::kThreads), Tr::SmemBytesFor(rows), stream,
                               p.pdl, p);
}

// XS_FP / XS_S8: GemvTraits::kXSplit in fp16/bf16 and in int8 mode; LW_FP:
// GemvTraits::kLateW in fp16/bf16 mode (int8 mode loads every k-tile's
// weights before the wait).
#define BITNET_GEMV_CONFIG(name, NT, RG, WARPS, BPS, XS_FP, XS_S8, LW_FP)                  \
  GemmKernelInfo {                                                                         \
    name, RG * 16, NT * 8, WARPS * 32, false, true, {                                      \
      &LaunchGemv<MmaType::kF16, NT, RG, WARPS, BPS, XS_FP, LW_FP>,                        \
          &LaunchGemv<MmaType::kBF16, NT, RG, WARPS, BPS, XS_FP, LW_FP>,                   \
          &LaunchGemv<MmaType::kS8, NT, RG, WARPS, BPS, XS_S8, 0>                          \
    }, BPS, true                                                                           \
  }

#define BITNET_MMA_CONFIG(name, WN, WM, RG, NT, ST)                                     \
  GemmKernelInfo {                                                                       \
    name, WN * RG * 16, WM * NT * 8, WN * WM * 32, false, false, {                       \
      &LaunchMma<MmaType::kF16, WN, WM, RG, NT, ST>,                                     \
          &LaunchMma<MmaType::kBF16, WN, WM, RG, NT, ST>,                                \
          &LaunchMma<MmaType::kS8, WN, WM, RG, NT, ST>                                   \
    }                                                                                    \
  }

}  // namespace

// The mma.sync configurations, in id order (ids 0..kMmaKernelCount-1).
// gemv: the last two arguments are the cp.async groups per k-tile of the
// warp-local x staging in fp16/bf16 and in int8 mode (GemvTraits::kXSplit).
// Session 17 (H100, graph --pdl, three rounds against one group per pass):
// 2 for the 8-row tiles (N = 4096, M = 8: fp16 4.31 -> 4.07 us, int8 5.52 ->
// 5.29; N = 11008, M = 8: fp16 8.10 -> 7.94, int8 8.22 -> 7.98); for
// gemv_w32_b16_16w 1 in fp16 (M = 16: 5.51 -> 5.33; 2 gave 5.50) and 2 in
// int8 (6.23 -> 5.44; 1 gave 6.10); 4 was slower everywhere; gemv_w48_b16
// int8 keeps 0 (1 and 2 spilled more registers: 11.05 -> 12.7 us);
// gemv_w16_b8 fp16 1 (3.92 either way; 2 gave 4.18). Configurations not
// measured keep 0.
// gemv: LW_FP, the k-tiles per warp whose weights load after the x copies in
// fp16/bf16 mode. Session 18 (H100, graph --pdl, two rounds): gemv_w16_b8 1
// (N = 4096, M = 1: 3.88-3.92 -> 3.79-3.80 us; all after the copies 4.56);
// slower elsewhere (gemv_w32_b8_16w M = 1 3.93 -> 4.06, gemv_w32_b16_16w
// M = 16 5.31 -> 5.57, gemv_w48_b8 N = 11008 M = 1 7.2 -> 8.3), so 0 there.
// mma: the last argument is the shared-memory budget of the cp.async
// pipeline (bytes; stages = budget / stage size). All stay under sm_80's
// 163 KB.
extern const GemmKernelInfo kMmaKernels[] = {
    BITNET_GEMV_CONFIG("gemv_w16_b8", 1, 1, 16, 2, 1, 0, 1),
    BITNET_GEMV_CONFIG("gemv_w16_b16", 2, 1, 16, 2, 0, 0, 0),
    BITNET_GEMV_CONFIG("gemv_w32_b8", 1, 2, 8, 2, 0, 0, 0),
    BITNET_GEMV_CONFIG("gemv_w32_b16", 2, 2, 8, 2, 0, 0, 0),
    // 48 weight rows per block: at N = 11008, 230 blocks fill one wave of two
    // blocks per SM (32-row blocks need 1.3 waves).
    BITNET_GEMV_CONFIG("gemv_w48_b8", 1, 3, 8, 2, 2, 2, 0),
    BITNET_GEMV_CONFIG("gemv_w48_b16", 2, 3, 8, 2, 0, 0, 0),
    // One block of 16 warps per SM (128 blocks at N = 4096: one wave). With
    // 16 batch rows each decoded weight fragment feeds both 8-row halves
    // (gemv_w32_b8 decodes it once per half, in two blocks) and the SM's
    // 128 KB of fp16 x is staged at once, per warp: at M = 16 4-8 % faster
    // than gemv_w32_b8 in fp16 mode, 9-13 % in int8 mode. With 8 rows, 3-5 %
    // faster than gemv_w16_b8 from M = 8 down to M = 1 in int8 mode (session
    // 16, RESULTS.md).
    BITNET_GEMV_CONFIG("gemv_w32_b16_16w", 2, 2, 16, 1, 1, 2, 0),
    BITNET_GEMV_CONFIG("gemv_w32_b8_16w", 1, 2, 16, 1, 2, 2, 0),
    // gemv_w16_b8's tile in 8 warps of 4 k-tiles each (16 warps per SM; where
    // AutoConfig takes it, and why: there). Its variants at N = 4096, M = 1
    // in fp16 mode (session 23, H200, graph --pdl, two rounds): the last of
    // each warp's k-tiles after its x copies 3.53-3.54 us, none 3.56, two
    // 3.58; two x groups per k-tile 3.89; 4 warps of 8 k-tiles 4.77.
    BITNET_GEMV_CONFIG("gemv_w16_b8_8w", 1, 1, 8, 2, 1, 0, 1),
    BITNET_MMA_CONFIG("mma_w64_b32", 4, 1, 1, 4, 48 * 1024),
    BITNET_MMA_CONFIG("mma_w128_b64", 4, 2, 2, 4, 96 * 1024),
    BITNET_MMA_CONFIG("mma_w128_b128", 4, 2, 2, 8, 110 * 1024),
};
extern const int kMmaKernelCount = sizeof(kMmaKernels) / sizeof(kMmaKernels[0]);

cudaError_t SetGemvTrace(unsigned long long* buffer, int mma_type) {
#ifdef BITNET_GEMV_TRACE
  const cudaError_t e = cudaMemcpyToSymbol(g_gemv_trace, &buffer, sizeof(buffer));
  if (e != cudaSuccess) return e;
  return cudaMemcpyToSymbol(g_gemv_trace_type, &mma_type, sizeof(mma_type));
#else
  (void)buffer;
  (void)mma_type;
  return cudaErrorNotSupported;
#endif
}

}  // namespace bitnet::cuda_internal

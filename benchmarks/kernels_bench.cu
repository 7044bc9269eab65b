// bitnet-bench kernels: the CUDA ternary kernels against cuBLAS fp16.
//
// Per shape (K = 4096, N in {4096, 11008}, M in {1, 16, 64, 128, 256, 512,
// 2048} unless overridden): cuBLAS cublasGemmEx (fp16 in/out, fp32 compute;
// what nn.Linear in half precision runs), ours with fp16 activations, ours
// with int8 activations (the quantization launch included), speedups, and
// each time against its floors: bytes / measured copy bandwidth, operations /
// measured cuBLAS peak (fp16 8192^3; int8 8192^3 for the int8 path).
//
// Method (ARCHITECTURE.md "Performance method"): CUDA events, warm-up, median
// of --reps runs (default 200), fresh random data (never zeros), and no run
// finding its data in L2: by default every buffer is rotated over sets that
// together exceed 2x L2 and the runs go back to back (see TimingMethod);
// --timing flush instead reads 2x L2 before each isolated run.
// Our outputs are checked against cuBLAS on the same data before timing.
//
// Options: --csv FILE --json FILE --reps N --warmup N --m 1,16,... --n 4096,...
//          --k 4096 --device D --sweep FILE (time every config x split-K too;
//          with --config NAME only that configuration)
//          --pdl (our launches set CudaLinearArgs::overlap_previous_kernel:
//          programmatic dependent launch on sm_90+, so with back-to-back runs
//          a gemv launch may start, and load its weights, while the previous
//          run still finishes; with --timing graph the captured launches are
//          joined by programmatic edges)
// Environment: BITNET_GEMV_TRACE=FILE [BITNET_GEMV_TRACE_MODE=int8|fp16]
//          writes the last gemv launch's per-warp timeline to FILE and the
//          last ws launch's per-block one to FILE.ws.csv (a build with
//          -DBITNET_GEMV_TRACE=ON; benchmarks/gemv_trace_capture.h).
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "benchmarks/gemv_trace_capture.h"
#include "kernels/cuda/ternary_cuda.h"
#include "kernels/ternary_format.h"

namespace {

using bitnet::ActivationQuant;
using bitnet::CudaBuffer;
using bitnet::CudaDType;
using bitnet::CudaLinearArgs;
using bitnet::CudaTernaryWeights;

#define BENCH_CHECK_CUDA(call)                                                              \
  do {                                                                                      \
    cudaError_t e_ = (call);                                                                \
    if (e_ != cudaSuccess) {                                                                \
      std::fprintf(stderr, "kernels bench: %s failed: %s (%s:%d)\n", #call,                 \
                   cudaGetErrorString(e_), __FILE__, __LINE__);                             \
      return false;                                                                         \
    }                                                                                       \
  } while (0)
#define BENCH_CHECK_CUBLAS(call)                                                            \
  do {                                                                                      \
    cublasStatus_t s_ = (call);                                                             \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                      \
      std::fprintf(stderr, "kernels bench: %s failed: cublas status %d (%s:%d)\n", #call,   \
                   static_cast<int>(s_), __FILE__, __LINE__);                               \
      return false;                                                                         \
    }                                                                                       \
  } while (0)
#define BENCH_CHECK_STATUS(expr)                                                            \
  do {                                                                                      \
    const absl::Status st_ = (expr);                                                        \
    if (!st_.ok()) {                                                                        \
      std::fprintf(stderr, "kernels bench: %s: %s\n", #expr, st_.ToString().c_str());      \
      return false;                                                                         \
    }                                                                                       \
  } while (0)

// How a repetition is kept from finding its data in L2 (ARCHITECTURE.md
// allows either):
//  * kRotate (default): `sets` copies of every buffer (weights, x, y) that
//    together exceed 2x the L2 size; repetition i uses set i % sets, and the
//    repetitions run back to back, an event between each two, after a device
//    spin long enough for the host to enqueue the whole group. A repetition's
//    time is then what a layer costs inside a sequence of layers: its kernels
//    plus the gaps the GPU needs between dependent launches, without the
//    fixed cost of starting and stopping an isolated timed region.
//  * kFlush: before each repetition a read of 2x the L2 size, a 20 us spin,
//    then start event, the work, stop event (session 1's method; its floor
//    is an isolated launch, ~3 us on an H100).
//  * kGraph: as kRotate, but the 64 repetitions of a group are captured in a
//    CUDA graph and replayed (events around each replay; a sample is the
//    replay time / 64). This is how a server runs a model's layers when it
//    captures its forward pass: the per-launch cost of a stream launch and
//    of the events between runs is mostly gone, for both sides.
enum class TimingMethod { kRotate, kFlush, kGraph };

struct Options {
  std::string csv;
  std::string json;
  std::string sweep;
  bool ceilings = true;  // --no-ceilings: skip the copy / 8192^3 measurements
  TimingMethod timing = TimingMethod::kRotate;  // --timing rotate|flush|graph
  std::string config;  // --config NAME: force one configuration (profiling)
  bool pdl = false;    // --pdl: our calls set overlap_previous_kernel
  int reps = 200;
  int warmup = 20;
  int device = 0;
  std::vector<int64_t> ms = {1, 16, 64, 128, 256, 512, 2048};
  std::vector<int64_t> ns = {4096, 11008};
  int64_t k = 4096;
};

std::vector<int64_t> ParseList(const char* s) {
  std::vector<int64_t> v;
  const char* p = s;
  while (*p != '\0') {
    char* end = nullptr;
    v.push_back(std::strtoll(p, &end, 10));
    if (end == p) break;
    p = (*end == ',') ? end + 1 : end;
  }
  return v;
}

bool ParseOptions(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* name) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "kernels bench: %s needs a value\n", name);
        return nullptr;
      }
      return argv[++i];
    };
    const char* v = nullptr;
    if (a == "--csv") {
      if ((v = value("--csv")) == nullptr) return false;
      o->csv = v;
    } else if (a == "--json") {
      if ((v = value("--json")) == nullptr) return false;
      o->json = v;
    } else if (a == "--sweep") {
      if ((v = value("--sweep")) == nullptr) return false;
      o->sweep = v;
    } else if (a == "--reps") {
      if ((v = value("--reps")) == nullptr) return false;
      o->reps = std::max(1, std::atoi(v));
    } else if (a == "--warmup") {
      if ((v = value("--warmup")) == nullptr) return false;
      o->warmup = std::max(0, std::atoi(v));
    } else if (a == "--device") {
      if ((v = value("--device")) == nullptr) return false;
      o->device = std::atoi(v);
    } else if (a == "--m") {
      if ((v = value("--m")) == nullptr) return false;
      o->ms = ParseList(v);
    } else if (a == "--n") {
      if ((v = value("--n")) == nullptr) return false;
      o->ns = ParseList(v);
    } else if (a == "--k") {
      if ((v = value("--k")) == nullptr) return false;
      o->k = std::atoll(v);
    } else if (a == "--timing") {
      if ((v = value("--timing")) == nullptr) return false;
      if (std::string(v) == "rotate") {
        o->timing = TimingMethod::kRotate;
      } else if (std::string(v) == "flush") {
        o->timing = TimingMethod::kFlush;
      } else if (std::string(v) == "graph") {
        o->timing = TimingMethod::kGraph;
      } else {
        std::fprintf(stderr, "kernels bench: --timing is %s; must be rotate, flush or graph\n", v);
        return false;
      }
    } else if (a == "--config") {
      if ((v = value("--config")) == nullptr) return false;
      o->config = v;
    } else if (a == "--no-ceilings") {
      o->ceilings = false;
    } else if (a == "--pdl") {
      o->pdl = true;
    } else if (a == "--help" || a == "-h") {
      std::printf(
          "bitnet-bench kernels [--csv FILE] [--json FILE] [--sweep FILE] [--reps N]\n"
          "  [--warmup N] [--m 1,16,...] [--n 4096,11008] [--k 4096] [--device D]\n"
          "  [--no-ceilings] [--timing rotate|flush|graph] [--config NAME] [--pdl]\n"
          "  --pdl: launch our kernels with programmatic dependent launch (sm_90+;\n"
          "         CudaLinearArgs::overlap_previous_kernel), in every timing method\n");
      std::exit(0);
    } else {
      std::fprintf(stderr, "kernels bench: unknown option %s\n", a.c_str());
      return false;
    }
  }
  return !o->ms.empty() && !o->ns.empty() && o->k > 0;
}

// Reads the whole buffer (16-byte loads) so that L2 ends up holding clean
// lines of it: unlike a memset, no dirty lines are left for the timed kernel
// to write back.
__global__ void flush_l2_kernel(const uint4* p, size_t n, unsigned* sink) {
  uint32_t acc = 0;
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    const uint4 v = __ldcg(p + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9E3779B9u) *sink = acc;  // practically never; keeps the loads
}

// Spins for `ns` nanoseconds: queued before the start event, it gives the
// host time to enqueue the timed work, so host-side launch cost never shows
// up as a gap inside the timed region.
__global__ void spin_kernel(unsigned long long ns) {
  unsigned long long t0;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  for (;;) {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    if (t - t0 >= ns) break;
  }
}

__global__ void empty_kernel() {}


// Times `run(i)` (which enqueues repetition i on `stream`); returns the
// median in microseconds.
class Timer {
 public:
  static constexpr int kGroup = 64;  // repetitions enqueued behind one spin

  bool Init(cudaStream_t stream, size_t l2_bytes, int sms, TimingMethod method) {
    stream_ = stream;
    sms_ = sms;
    method_ = method;
    l2_bytes_ = l2_bytes;
    flush_bytes_ = std::max<size_t>(2 * l2_bytes, 64 << 20);
    BENCH_CHECK_CUDA(cudaMalloc(&flush_, flush_bytes_));
    BENCH_CHECK_CUDA(cudaMemset(flush_, 0x5A, flush_bytes_));
    BENCH_CHECK_CUDA(cudaMalloc(&sink_, sizeof(unsigned)));
    for (cudaEvent_t& e : events_) BENCH_CHECK_CUDA(cudaEventCreate(&e));
    return true;
  }
  ~Timer() {
    if (flush_ != nullptr) cudaFree(flush_);
    if (sink_ != nullptr) cudaFree(sink_);
    for (cudaEvent_t e : events_) {
      if (e != nullptr) cudaEventDestroy(e);
    }
  }
  // Buffer sets a repetition of `bytes_per_run` needs so that the sets
  // together exceed 2x L2 (1 when the L2 is flushed instead).
  int SetsFor(double bytes_per_run, int max_sets = 32) const {
    if (method_ == TimingMethod::kFlush) return 1;
    const double need = 2.0 * static_cast<double>(l2_bytes_) / std::max(bytes_per_run, 1.0);
    return static_cast<int>(std::clamp<double>(std::ceil(need), 2, max_sets));
  }

  template <typename F>
  bool Median(F&& run, int warmup, int reps, double* us) {
    for (int i = 0; i < warmup; ++i) {
      if (!run(i)) return false;
    }
    std::vector<float> t;
    t.reserve(static_cast<size_t>(reps));
    if (method_ == TimingMethod::kGraph) {
      cudaGraph_t graph = nullptr;
      BENCH_CHECK_CUDA(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
      bool ok = true;
      for (int j = 0; j < kGroup && ok; ++j) ok = run(j);
      const cudaError_t end = cudaStreamEndCapture(stream_, &graph);
      if (!ok || end != cudaSuccess) {
        std::fprintf(stderr, "kernels bench: graph capture failed (%s)\n",
                     cudaGetErrorString(end));
        if (graph != nullptr) cudaGraphDestroy(graph);
        return false;
      }
      cudaGraphExec_t exec = nullptr;
      const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
      cudaGraphDestroy(graph);
      BENCH_CHECK_CUDA(inst);
      const int replays = std::max(100, reps / kGroup);
      bool good = true;
      for (int r = -3; r < replays && good; ++r) {  // 3 warm-up replays
        good = cudaEventRecord(events_[0], stream_) == cudaSuccess &&
               cudaGraphLaunch(exec, stream_) == cudaSuccess &&
               cudaEventRecord(events_[1], stream_) == cudaSuccess &&
               cudaEventSynchronize(events_[1]) == cudaSuccess;
        float ms = 0;
        if (good && r >= 0) {
          good = cudaEventElapsedTime(&ms, events_[0], events_[1]) == cudaSuccess;
          t.push_back(ms / kGroup);
        }
      }
      cudaGraphExecDestroy(exec);
      if (!good) {
        std::fprintf(stderr, "kernels bench: graph replay failed\n");
        return false;
      }
    } else if (method_ == TimingMethod::kFlush) {
      for (int i = 0; i < reps; ++i) {
        flush_l2_kernel<<<4 * sms_, 512, 0, stream_>>>(static_cast<const uint4*>(flush_),
                                                         flush_bytes_ / 16, sink_);
        spin_kernel<<<1, 1, 0, stream_>>>(20000);
        BENCH_CHECK_CUDA(cudaGetLastError());
        BENCH_CHECK_CUDA(cudaEventRecord(events_[0], stream_));
        if (!run(i)) return false;
        BENCH_CHECK_CUDA(cudaEventRecord(events_[1], stream_));
        BENCH_CHECK_CUDA(cudaEventSynchronize(events_[1]));
        float ms = 0;
        BENCH_CHECK_CUDA(cudaEventElapsedTime(&ms, events_[0], events_[1]));
        t.push_back(ms);
      }
    } else {
      int done = 0;
      int retries = 0;
      while (done < reps) {
        const int g = std::min(kGroup, reps - done);
        spin_kernel<<<1, 1, 0, stream_>>>(spin_ns_);
        BENCH_CHECK_CUDA(cudaGetLastError());
        const auto host0 = std::chrono::steady_clock::now();
        BENCH_CHECK_CUDA(cudaEventRecord(events_[0], stream_));
        for (int j = 0; j < g; ++j) {
          if (!run(done + j)) return false;
          BENCH_CHECK_CUDA(cudaEventRecord(events_[static_cast<size_t>(j) + 1], stream_));
        }
        const double host_ns =
            std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - host0)
                .count();
        BENCH_CHECK_CUDA(cudaEventSynchronize(events_[static_cast<size_t>(g)]));
        if (host_ns > 0.8 * static_cast<double>(spin_ns_) && retries < 8) {
          // The GPU may have caught up with the host inside the group: the
          // times would include host enqueue gaps. Spin longer and redo it.
          spin_ns_ = static_cast<unsigned long long>(2.0 * host_ns) + 100000;
          ++retries;
          continue;
        }
        for (int j = 0; j < g; ++j) {
          float ms = 0;
          BENCH_CHECK_CUDA(cudaEventElapsedTime(&ms, events_[static_cast<size_t>(j)],
                                                events_[static_cast<size_t>(j) + 1]));
          t.push_back(ms);
        }
        done += g;
      }
    }
    std::sort(t.begin(), t.end());
    *us = 1000.0 * t[t.size() / 2];
    return true;
  }

 private:
  cudaStream_t stream_ = nullptr;
  int sms_ = 1;
  TimingMethod method_ = TimingMethod::kRotate;
  size_t l2_bytes_ = 0;
  void* flush_ = nullptr;
  unsigned* sink_ = nullptr;
  size_t flush_bytes_ = 0;
  unsigned long long spin_ns_ = 500000;
  cudaEvent_t events_[kGroup + 1] = {};
};

struct Ceilings {
  double bandwidth_gbs = 0;   // device copy, bytes read + written
  double fp16_tflops = 0;     // cuBLAS fp16 8192^3
  double int8_tops = 0;       // cuBLAS int8 8192^3
};

bool MeasureCeilings(cublasHandle_t h, cudaStream_t stream, Timer& timer, Ceilings* c) {
  {
    const size_t bytes = size_t{1} << 30;
    void *a = nullptr, *b = nullptr;
    BENCH_CHECK_CUDA(cudaMalloc(&a, bytes));
    BENCH_CHECK_CUDA(cudaMalloc(&b, bytes));
    BENCH_CHECK_CUDA(cudaMemset(a, 1, bytes));
    double us = 0;
    const bool ok = timer.Median(
        [&](int) { return cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream) == cudaSuccess; },
        3, 10, &us);
    cudaFree(a);
    cudaFree(b);
    if (!ok) return false;
    c->bandwidth_gbs = 2.0 * bytes / (us * 1e-6) / 1e9;
  }
  const int n = 8192;
  void *a = nullptr, *b = nullptr, *d = nullptr;
  BENCH_CHECK_CUDA(cudaMalloc(&a, size_t{n} * n * 2));
  BENCH_CHECK_CUDA(cudaMalloc(&b, size_t{n} * n * 2));
  BENCH_CHECK_CUDA(cudaMalloc(&d, size_t{n} * n * 4));
  {
    // Random fp16 in [-1, 1) (not zeros: zeros run faster).
    std::vector<__half> host(size_t{n} * n);
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (auto& v : host) v = __float2half(u(rng));
    BENCH_CHECK_CUDA(cudaMemcpy(a, host.data(), host.size() * 2, cudaMemcpyHostToDevice));
    BENCH_CHECK_CUDA(cudaMemcpy(b, host.data(), host.size() * 2, cudaMemcpyHostToDevice));
  }
  const float alpha = 1.0f, beta = 0.0f;
  double us = 0;
  if (!timer.Median(
          [&](int) {
            return cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &alpha, a, CUDA_R_16F, n, b,
                                CUDA_R_16F, n, &beta, d, CUDA_R_16F, n, CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS;
          },
          3, 10, &us)) {
    return false;
  }
  c->fp16_tflops = 2.0 * n * n * double(n) / (us * 1e-6) / 1e12;
  const int32_t ialpha = 1, ibeta = 0;
  if (timer.Median(
          [&](int) {
            return cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &ialpha, a, CUDA_R_8I, n, b,
                                CUDA_R_8I, n, &ibeta, d, CUDA_R_32I, n, CUBLAS_COMPUTE_32I,
                                CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS;
          },
          3, 10, &us)) {
    c->int8_tops = 2.0 * n * n * double(n) / (us * 1e-6) / 1e12;
  } else {
    c->int8_tops = 2 * c->fp16_tflops;  // datasheet ratio
  }
  cudaFree(a);
  cudaFree(b);
  cudaFree(d);
  return true;
}

struct Row {
  int64_t n = 0, k = 0, m = 0;
  double cublas_us = 0, fp16_us = 0, int8_us = 0;
  std::string fp16_config, int8_config;
  int fp16_split = 0, int8_split = 0;
  double fp16_rel_err = 0, int8_rel_err = 0;
  double floor_mem_cublas_us = 0, floor_mem_ours_us = 0;
  double floor_fp16_compute_us = 0, floor_int8_compute_us = 0;
};

double RelErr(const std::vector<__half>& got, const std::vector<__half>& want) {
  double e = 0, r = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = __half2float(got[i]);
    const double w = __half2float(want[i]);
    if (!std::isfinite(g)) return INFINITY;
    e += (g - w) * (g - w);
    r += w * w;
  }
  return std::sqrt(e / std::max(r, 1e-300));
}

std::string JsonEscape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o.push_back('\\');
    o.push_back(c);
  }
  return o;
}

bool Run(const Options& o) {
  BENCH_CHECK_CUDA(cudaSetDevice(o.device));
  cudaDeviceProp prop;
  BENCH_CHECK_CUDA(cudaGetDeviceProperties(&prop, o.device));
  absl::StatusOr<bool> has_wgmma = bitnet::CudaDeviceHasWgmma(o.device);
  BENCH_CHECK_STATUS(has_wgmma.status());
  cudaStream_t stream = nullptr;
  BENCH_CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cublasHandle_t h = nullptr;
  BENCH_CHECK_CUBLAS(cublasCreate(&h));
  BENCH_CHECK_CUBLAS(cublasSetStream(h, stream));
  Timer timer;
  if (!timer.Init(stream, static_cast<size_t>(prop.l2CacheSize), prop.multiProcessorCount,
                  o.timing)) {
    return false;
  }

  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof(date), "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
  std::printf("# card: %s (sm_%d%d, %d SMs, L2 %d MB), wgmma kernels: %s, date: %s\n", prop.name,
              prop.major, prop.minor, prop.multiProcessorCount, prop.l2CacheSize >> 20,
              *has_wgmma ? "yes" : "no", date);
  std::printf("# timing: %s; PDL %s\n",
              o.timing == TimingMethod::kRotate
                  ? "rotate (buffer sets > 2x L2, repetitions back to back, an event between each)"
              : o.timing == TimingMethod::kGraph
                  ? "graph (buffer sets > 2x L2, 64 repetitions per CUDA graph, replay time / 64)"
                  : "flush (L2 read-flushed, spin, isolated start/stop events per repetition)",
              !o.pdl ? "off"
              : prop.major >= 9
                  ? "on (--pdl: our launches may overlap the previous kernel on the stream)"
                  : "requested (--pdl) but inactive: needs sm_90+");
  Ceilings ceil;
  if (o.ceilings) {
    if (!MeasureCeilings(h, stream, timer, &ceil)) return false;
  } else {
    // H100 SXM values measured by this benchmark (benchmarks/RESULTS.md);
    // used only for the floor columns when --no-ceilings (e.g. under ncu).
    ceil = {3000, 750, 1400};
  }
  double empty_us = 0;
  if (!timer.Median(
          [&](int) {
            empty_kernel<<<1, 32, 0, stream>>>();
            return cudaGetLastError() == cudaSuccess;
          },
          5, 100, &empty_us)) {
    return false;
  }
  std::printf(
      "# measured: copy %.0f GB/s (read+write), cuBLAS fp16 %.0f TFLOP/s, int8 %.0f TOP/s, "
      "empty kernel %.2f us (timing floor)\n",
      ceil.bandwidth_gbs, ceil.fp16_tflops, ceil.int8_tops, empty_us);

  std::FILE* sweep = nullptr;
  if (!o.sweep.empty()) {
    sweep = std::fopen(o.sweep.c_str(), "w");
    if (sweep == nullptr) {
      std::fprintf(stderr, "kernels bench: cannot write %s\n", o.sweep.c_str());
      return false;
    }
    std::fprintf(sweep, "n,k,m,mode,config,split_k,us\n");
  }

  int forced = bitnet::kCudaAutoConfig;
  if (!o.config.empty()) {
    forced = -1;
    for (const auto& cfg : bitnet::CudaKernelConfigs()) {
      if (cfg.name == o.config) forced = cfg.id;
    }
    if (forced < 0) {
      std::fprintf(stderr, "kernels bench: --config %s is not a compiled configuration\n",
                   o.config.c_str());
      return false;
    }
  }
  std::vector<Row> rows;
  int failures = 0;
  std::mt19937_64 rng(std::random_device{}());
  const int64_t k = o.k;
  for (int64_t n : o.ns) {
    // Weights: ternary from random normals (per-row scales); cuBLAS gets the
    // same dequantized values in fp16.
    std::vector<float> wf(static_cast<size_t>(n * k));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (float& v : wf) v = normal(rng) * 0.02f;
    absl::StatusOr<bitnet::PackedTernaryMatrix> packed =
        bitnet::QuantizeAndPack(wf, n, k, bitnet::ScaleGranularity::kPerRow);
    BENCH_CHECK_STATUS(packed.status());
    const std::vector<float> deq = bitnet::Dequantize(packed->view());
    std::vector<__half> wh(deq.size());
    for (size_t i = 0; i < deq.size(); ++i) wh[i] = __float2half(deq[i]);
    // Identical copies at different addresses: repetition i reads copy
    // i % copies, so (with kRotate) no repetition finds its weights in L2.
    const double ours_w_bytes = n * k / 4.0 + 4.0 * n;
    const double fp16_w_bytes = 2.0 * n * k;
    std::vector<std::unique_ptr<CudaTernaryWeights>> w;
    for (int c = 0; c < timer.SetsFor(ours_w_bytes); ++c) {
      absl::StatusOr<std::unique_ptr<CudaTernaryWeights>> wc =
          CudaTernaryWeights::Create(packed->view(), nullptr, o.device);
      BENCH_CHECK_STATUS(wc.status());
      w.push_back(*std::move(wc));
    }
    std::vector<void*> dw(static_cast<size_t>(timer.SetsFor(fp16_w_bytes)), nullptr);
    for (void*& d : dw) {
      BENCH_CHECK_CUDA(cudaMalloc(&d, wh.size() * 2));
      BENCH_CHECK_CUDA(cudaMemcpy(d, wh.data(), wh.size() * 2, cudaMemcpyHostToDevice));
    }

    for (int64_t m : o.ms) {
      Row row;
      row.n = n;
      row.k = k;
      row.m = m;
      // x / y sets: every repetition also reads a cold x and writes a y
      // that is not in L2 (set 0 is the one checked for correctness).
      const double io_bytes = 2.0 * m * k + 2.0 * m * n;
      const int cublas_sets = std::min<int>(timer.SetsFor(fp16_w_bytes + io_bytes),
                                            static_cast<int>(dw.size()));
      const int ours_sets = std::min<int>(timer.SetsFor(ours_w_bytes + io_bytes),
                                          static_cast<int>(w.size()));
      const int io_sets = std::max(cublas_sets, ours_sets);
      std::vector<__half> xh(static_cast<size_t>(m * k));
      std::vector<void*> dx(static_cast<size_t>(io_sets), nullptr);
      std::vector<void*> dy_ref(static_cast<size_t>(io_sets), nullptr);
      std::vector<void*> dy(static_cast<size_t>(io_sets), nullptr);
      for (int c = 0; c < io_sets; ++c) {
        for (auto& v : xh) v = __float2half(normal(rng));
        BENCH_CHECK_CUDA(cudaMalloc(&dx[c], xh.size() * 2));
        BENCH_CHECK_CUDA(cudaMemcpy(dx[c], xh.data(), xh.size() * 2, cudaMemcpyHostToDevice));
        BENCH_CHECK_CUDA(cudaMalloc(&dy_ref[c], static_cast<size_t>(m * n) * 2));
        BENCH_CHECK_CUDA(cudaMalloc(&dy[c], static_cast<size_t>(m * n) * 2));
      }

      const float alpha = 1.0f, beta = 0.0f;
      auto cublas = [&](int i) {
        const int c = i % cublas_sets;
        return cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
                            static_cast<int>(k), &alpha, dw[c], CUDA_R_16F, static_cast<int>(k),
                            dx[c], CUDA_R_16F, static_cast<int>(k), &beta, dy_ref[c], CUDA_R_16F,
                            static_cast<int>(n), CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS;
      };
      if (!timer.Median(cublas, o.warmup, o.reps, &row.cublas_us)) return false;
      std::vector<__half> y_ref(static_cast<size_t>(m * n));
      // The reference is set 0's answer: computed once more, alone.
      if (!cublas(0)) return false;
      BENCH_CHECK_CUDA(cudaStreamSynchronize(stream));
      BENCH_CHECK_CUDA(
          cudaMemcpy(y_ref.data(), dy_ref[0], y_ref.size() * 2, cudaMemcpyDeviceToHost));

      auto time_ours = [&](ActivationQuant mode, int config, int split, int warmup, int reps,
                           double* us, double* rel_err, std::string* config_name,
                           int* split_used) -> bool {
        CudaLinearArgs a;
        a.m = m;
        a.x = dx[0];
        a.x_dtype = CudaDType::kF16;
        a.weights = w[0].get();
        a.act_quant = mode;
        a.y = dy[0];
        a.y_dtype = CudaDType::kF16;
        a.config = config;
        a.split_k = split;
        // Copied into every timed run below (ai = a), whatever the timing.
        a.overlap_previous_kernel = o.pdl;
        absl::StatusOr<bitnet::CudaLaunchPlan> plan = bitnet::CudaPlanLinear(a);
        BENCH_CHECK_STATUS(plan.status());
        absl::StatusOr<CudaBuffer> ws = CudaBuffer::Create(plan->workspace_bytes, o.device);
        BENCH_CHECK_STATUS(ws.status());
        BENCH_CHECK_STATUS(ws->Fill(0, stream));
        a.workspace = ws->data();
        a.workspace_bytes = ws->bytes();
        BENCH_CHECK_CUDA(cudaMemsetAsync(dy[0], 0xFF, static_cast<size_t>(m * n) * 2, stream));
        BENCH_CHECK_STATUS(bitnet::CudaTernaryLinear(a, stream));
        BENCH_CHECK_CUDA(cudaStreamSynchronize(stream));
        std::vector<__half> y(static_cast<size_t>(m * n));
        BENCH_CHECK_CUDA(cudaMemcpy(y.data(), dy[0], y.size() * 2, cudaMemcpyDeviceToHost));
        *rel_err = RelErr(y, y_ref);
        if (config_name != nullptr) *config_name = bitnet::CudaKernelConfigs()[plan->config].name;
        if (split_used != nullptr) *split_used = plan->split_k;
        // int8 activations differ from fp16 by the quantization (~1e-2).
        const double tol = mode == ActivationQuant::kInt8 ? 5e-2 : 5e-3;
        if (!(*rel_err < tol)) {
          std::fprintf(stderr, "kernels bench: n=%lld m=%lld %s: output differs from cuBLAS by %g\n",
                       static_cast<long long>(n), static_cast<long long>(m),
                       mode == ActivationQuant::kInt8 ? "int8" : "fp16", *rel_err);
          return false;
        }
        return timer.Median(
            [&](int i) {
              const int c = i % ours_sets;
              CudaLinearArgs ai = a;
              ai.x = dx[c];
              ai.weights = w[c].get();
              ai.y = dy[c];
              return bitnet::CudaTernaryLinear(ai, stream).ok();
            },
            warmup, reps, us);
      };
      // A failure is reported and recorded (NaN), and the run goes on, so one
      // run on the GPU host shows every shape.
      if (!time_ours(ActivationQuant::kNone, forced, 0, o.warmup, o.reps,
                     &row.fp16_us, &row.fp16_rel_err, &row.fp16_config, &row.fp16_split)) {
        row.fp16_us = NAN;
        ++failures;
      }
      if (!time_ours(ActivationQuant::kInt8, forced, 0, o.warmup, o.reps,
                     &row.int8_us, &row.int8_rel_err, &row.int8_config, &row.int8_split)) {
        row.int8_us = NAN;
        ++failures;
      }
      if (sweep != nullptr) {
        for (const auto& cfg : bitnet::CudaKernelConfigs()) {
          if (cfg.wgmma && !*has_wgmma) continue;
          // With --config the sweep covers that configuration's split-K choices only.
          if (forced != bitnet::kCudaAutoConfig && cfg.id != forced) continue;
          for (ActivationQuant mode : {ActivationQuant::kNone, ActivationQuant::kInt8}) {
            if (mode == ActivationQuant::kNone ? !cfg.fp : !cfg.int8) continue;
            for (int split : {0, 1, 2, 4, 8}) {
              if (split > 1 && !cfg.split_k) continue;
              double us = 0, err = 0;
              if (!time_ours(mode, cfg.id, split, 3, 30, &us, &err, nullptr, nullptr)) {
                us = NAN;
                ++failures;
              }
              std::fprintf(sweep, "%lld,%lld,%lld,%s,%s,%d,%.2f\n", static_cast<long long>(n),
                           static_cast<long long>(k), static_cast<long long>(m),
                           mode == ActivationQuant::kInt8 ? "int8" : "fp16", cfg.name.c_str(),
                           split, us);
            }
          }
        }
        std::fflush(sweep);
      }
      // Floors: fewest bytes over the measured copy bandwidth; operations
      // over the measured cuBLAS peak.
      const double bw = ceil.bandwidth_gbs * 1e9;
      const double io = 2.0 * m * k + 2.0 * m * n;
      row.floor_mem_cublas_us = (2.0 * n * k + io) / bw * 1e6;
      row.floor_mem_ours_us = (n * k / 4.0 + 4.0 * n + io) / bw * 1e6;
      const double ops = 2.0 * m * n * k;
      row.floor_fp16_compute_us = ops / (ceil.fp16_tflops * 1e12) * 1e6;
      row.floor_int8_compute_us = ops / (ceil.int8_tops * 1e12) * 1e6;
      rows.push_back(row);
      std::printf(
          "n=%5lld k=%lld m=%5lld  cublas %8.2f us | fp16 %8.2f us x%5.2f (%s/%d) | int8 %8.2f us "
          "x%5.2f (%s/%d)\n",
          static_cast<long long>(n), static_cast<long long>(k), static_cast<long long>(m),
          row.cublas_us, row.fp16_us, row.cublas_us / row.fp16_us, row.fp16_config.c_str(),
          row.fp16_split, row.int8_us, row.cublas_us / row.int8_us, row.int8_config.c_str(),
          row.int8_split);
      std::fflush(stdout);
      for (int c = 0; c < io_sets; ++c) {
        cudaFree(dx[c]);
        cudaFree(dy_ref[c]);
        cudaFree(dy[c]);
      }
    }
    for (void* d : dw) cudaFree(d);
  }
  if (sweep != nullptr) std::fclose(sweep);

  // Summary table (last, so it survives a truncated log).
  std::printf("\n%-6s %-5s %7s %10s %10s %10s %8s %8s %8s %7s %7s\n", "n", "m", "", "cublas_us",
              "fp16_us", "int8_us", "x_fp16", "x_int8", "x_best", "%floor", "target");
  for (const Row& r : rows) {
    const double best = std::min(r.fp16_us, r.int8_us);
    const double sp = r.cublas_us / best;
    double target = 1.0;
    if (r.m <= 16) target = 4.0;
    else if (r.m == 128) target = 2.0;
    else if (r.m >= 512) target = 1.3;
    const double floor_us = std::max(r.floor_mem_ours_us, r.fp16_us <= r.int8_us
                                                              ? r.floor_fp16_compute_us
                                                              : r.floor_int8_compute_us);
    std::printf("%-6lld %-5lld %7s %10.2f %10.2f %10.2f %8.2f %8.2f %8.2f %6.0f%% %5.1fx %s\n",
                static_cast<long long>(r.n), static_cast<long long>(r.m), "", r.cublas_us,
                r.fp16_us, r.int8_us, r.cublas_us / r.fp16_us, r.cublas_us / r.int8_us, sp,
                100.0 * floor_us / best, target, sp >= target ? "ok" : "MISS");
  }

  if (!o.csv.empty()) {
    std::FILE* f = std::fopen(o.csv.c_str(), "w");
    if (f == nullptr) {
      std::fprintf(stderr, "kernels bench: cannot write %s\n", o.csv.c_str());
      return false;
    }
    std::fprintf(f,
                 "card,n,k,m,cublas_us,fp16_us,int8_us,speedup_fp16,speedup_int8,speedup_best,"
                 "fp16_config,fp16_split,int8_config,int8_split,fp16_rel_err_vs_cublas,"
                 "int8_rel_err_vs_cublas,floor_mem_cublas_us,floor_mem_ours_us,"
                 "floor_fp16_compute_us,floor_int8_compute_us,pct_mem_floor_fp16,"
                 "pct_mem_floor_int8,pct_compute_floor_fp16,pct_compute_floor_int8\n");
    for (const Row& r : rows) {
      std::fprintf(f,
                   "\"%s\",%lld,%lld,%lld,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%s,%d,%s,%d,%.3g,%.3g,"
                   "%.3f,%.3f,%.3f,%.3f,%.1f,%.1f,%.1f,%.1f\n",
                   prop.name, static_cast<long long>(r.n), static_cast<long long>(r.k),
                   static_cast<long long>(r.m), r.cublas_us, r.fp16_us, r.int8_us,
                   r.cublas_us / r.fp16_us, r.cublas_us / r.int8_us,
                   r.cublas_us / std::min(r.fp16_us, r.int8_us), r.fp16_config.c_str(),
                   r.fp16_split, r.int8_config.c_str(), r.int8_split, r.fp16_rel_err,
                   r.int8_rel_err, r.floor_mem_cublas_us, r.floor_mem_ours_us,
                   r.floor_fp16_compute_us, r.floor_int8_compute_us,
                   100 * r.floor_mem_ours_us / r.fp16_us, 100 * r.floor_mem_ours_us / r.int8_us,
                   100 * r.floor_fp16_compute_us / r.fp16_us,
                   100 * r.floor_int8_compute_us / r.int8_us);
    }
    std::fclose(f);
  }
  if (!o.json.empty()) {
    std::FILE* f = std::fopen(o.json.c_str(), "w");
    if (f == nullptr) {
      std::fprintf(stderr, "kernels bench: cannot write %s\n", o.json.c_str());
      return false;
    }
    std::fprintf(f,
                 "{\n  \"card\": \"%s\",\n  \"date\": \"%s\",\n  \"sms\": %d,\n"
                 "  \"copy_bandwidth_gbs\": %.1f,\n  \"cublas_fp16_tflops\": %.1f,\n"
                 "  \"cublas_int8_tops\": %.1f,\n  \"empty_kernel_us\": %.2f,\n"
                 "  \"reps\": %d,\n  \"pdl\": %s,\n  \"results\": [\n",
                 JsonEscape(prop.name).c_str(), date, prop.multiProcessorCount,
                 ceil.bandwidth_gbs, ceil.fp16_tflops, ceil.int8_tops, empty_us, o.reps,
                 o.pdl ? "true" : "false");
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      std::fprintf(f,
                   "    {\"n\": %lld, \"k\": %lld, \"m\": %lld, \"cublas_us\": %.3f, "
                   "\"fp16_us\": %.3f, \"int8_us\": %.3f, \"fp16_config\": \"%s\", "
                   "\"fp16_split\": %d, \"int8_config\": \"%s\", \"int8_split\": %d, "
                   "\"speedup_best\": %.3f, \"floor_mem_ours_us\": %.3f, "
                   "\"floor_fp16_compute_us\": %.3f, \"floor_int8_compute_us\": %.3f}%s\n",
                   static_cast<long long>(r.n), static_cast<long long>(r.k),
                   static_cast<long long>(r.m), r.cublas_us, r.fp16_us, r.int8_us,
                   r.fp16_config.c_str(), r.fp16_split, r.int8_config.c_str(), r.int8_split,
                   r.cublas_us / std::min(r.fp16_us, r.int8_us), r.floor_mem_ours_us,
                   r.floor_fp16_compute_us, r.floor_int8_compute_us,
                   i + 1 < rows.size() ? "," : "");
    }
    std::fprintf(f, "  ]\n}\n");
    std::fclose(f);
  }
  cublasDestroy(h);
  cudaStreamDestroy(stream);
  if (failures > 0) {
    std::fprintf(stderr, "kernels bench: %d runs failed (see above)\n", failures);
    return false;
  }
  return true;
}

}  // namespace

int RunKernelBenchmarks(int argc, char** argv) {
  Options o;
  if (!ParseOptions(argc, argv, &o)) return 2;
  absl::StatusOr<int> count = bitnet::CudaDeviceCount();
  if (!count.ok() || *count == 0) {
    std::fprintf(stderr, "bitnet-bench kernels: no CUDA device (%s)\n",
                 count.ok() ? "none visible" : count.status().ToString().c_str());
    return 1;
  }
  std::string error;
  std::unique_ptr<bitnet::bench::GemvTraceCapture> trace =
      bitnet::bench::GemvTraceCapture::FromEnvironment(&error);
  if (!error.empty()) {
    std::fprintf(stderr, "bitnet-bench kernels: %s\n", error.c_str());
    return 2;
  }
  const bool ok = Run(o);
  if (trace != nullptr && !trace->Write(&error)) {
    std::fprintf(stderr, "bitnet-bench kernels: %s\n", error.c_str());
    return 1;
  }
  return ok ? 0 : 1;
}

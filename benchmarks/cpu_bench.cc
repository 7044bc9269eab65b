// bitnet-bench cpu: the ternary CPU path (prepared weights, int8 activations)
// against OpenBLAS cblas_sgemm doing the same layer in fp32 (what nn.Linear
// runs on a CPU), at K = N = 4096 and M in {1, 16, 128, 512}, with the same
// thread count for both. Also reports the ternary none (fp32 activation) mode
// for information.
//
// Method: fresh random data (normal, never zeros), one warm-up call, Google
// Benchmark's real time (threads run inside each call), and the ratio table
// printed at the end (medians with --benchmark_repetitions=N). The ternary
// time includes quantizing x on every call. The weights stay the same across
// iterations: 4 MiB packed (may stay in L3) vs 64 MiB fp32 for sgemm (cannot);
// that difference is the format's point, not an artefact.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "benchmark/benchmark.h"
#include "kernels/ternary_format.h"
#include "kernels/ternary_gemm.h"

#ifdef BITNET_HAVE_OPENBLAS
#include <cblas.h>
#endif

namespace {

constexpr int64_t kK = 4096;
constexpr int64_t kN = 4096;
constexpr int64_t kMs[] = {1, 16, 128, 512};

int g_threads = 2;

struct Data {
  std::vector<float> x;  // [512, K]
  std::vector<float> w;  // [N, K] fp32 latent weights (the sgemm operand)
  bitnet::PackedTernaryMatrix packed;
  std::unique_ptr<bitnet::CpuTernaryWeights> prepared;
};

const Data& GetData() {
  static const Data* data = [] {
    auto* d = new Data;
    std::mt19937 rng(std::random_device{}());
    std::normal_distribution<float> dist;
    d->x.resize(512 * kK);
    for (float& f : d->x) f = dist(rng);
    d->w.resize(kN * kK);
    for (float& f : d->w) f = dist(rng) * 0.02f;
    auto packed = bitnet::QuantizeAndPack(d->w, kN, kK, bitnet::ScaleGranularity::kPerRow);
    if (!packed.ok()) {
      std::fprintf(stderr, "QuantizeAndPack: %s\n", std::string(packed.status().message()).c_str());
      std::abort();
    }
    d->packed = *std::move(packed);
    auto prepared = bitnet::CpuTernaryWeights::Prepare(d->packed.view());
    if (!prepared.ok()) {
      std::fprintf(stderr, "Prepare: %s\n", std::string(prepared.status().message()).c_str());
      std::abort();
    }
    d->prepared = std::make_unique<bitnet::CpuTernaryWeights>(*std::move(prepared));
    return d;
  }();
  return *data;
}

void SetFlops(benchmark::State& state, int64_t m) {
  state.counters["GFLOP/s"] = benchmark::Counter(
      2.0 * m * kN * kK * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = g_threads;
}

void BM_Ternary(benchmark::State& state, bitnet::ActivationQuant mode) {
  const Data& d = GetData();
  const int64_t m = state.range(0);
  std::vector<float> y(m * kN);
  bitnet::TernaryGemmArgs args;
  args.m = m;
  args.x = d.x.data();
  args.weight = d.packed.view();
  args.act_quant = mode;
  args.y = y.data();
  bitnet::CpuGemmOptions options;
  options.num_threads = g_threads;
  if (absl::Status s = bitnet::CpuTernaryGemm(args, *d.prepared, options); !s.ok()) {
    state.SkipWithError(std::string(s.message()).c_str());
    return;
  }
  for (auto _ : state) {
    (void)bitnet::CpuTernaryGemm(args, *d.prepared, options);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  SetFlops(state, m);
}

void BM_TernaryInt8(benchmark::State& state) { BM_Ternary(state, bitnet::ActivationQuant::kInt8); }
void BM_TernaryNone(benchmark::State& state) { BM_Ternary(state, bitnet::ActivationQuant::kNone); }

#ifdef BITNET_HAVE_OPENBLAS
void BM_OpenBlasSgemm(benchmark::State& state) {
  const Data& d = GetData();
  const int64_t m = state.range(0);
  std::vector<float> y(m * kN);
  auto run = [&] {
    // y[m, N] = x[m, K] * W[N, K]^T, the nn.Linear layout.
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m),
                static_cast<int>(kN), static_cast<int>(kK), 1.0f, d.x.data(),
                static_cast<int>(kK), d.w.data(), static_cast<int>(kK), 0.0f, y.data(),
                static_cast<int>(kN));
  };
  run();
  for (auto _ : state) {
    run();
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  SetFlops(state, m);
}
#endif

// Console output plus, per benchmark, the real time in ms: the median when
// --benchmark_repetitions is given, else the single run. For the ratio table.
class CollectingReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& run : runs) {
      if (run.error_occurred) continue;
      const std::string name = run.run_name.str();
      if (run.run_type == Run::RT_Aggregate) {
        if (run.aggregate_name == "median") times_ms_[name] = run.GetAdjustedRealTime();
      } else if (times_ms_.count(name) == 0) {
        times_ms_[name] = run.GetAdjustedRealTime();
      }
    }
    ConsoleReporter::ReportRuns(runs);
  }
  // Time of the benchmark whose name starts with `prefix`, or -1.
  double Find(const std::string& prefix) const {
    for (const auto& [name, ms] : times_ms_) {
      if (name.rfind(prefix, 0) == 0) return ms;
    }
    return -1.0;
  }

 private:
  std::map<std::string, double> times_ms_;
};

}  // namespace

int RunCpuBenchmarks(int argc, char** argv) {
  // Our own flag first; everything else goes to Google Benchmark.
  g_threads = static_cast<int>(std::thread::hardware_concurrency());
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], "--threads=", 10) == 0) {
      g_threads = std::atoi(argv[i] + 10);
    } else {
      rest.push_back(argv[i]);
    }
  }
  if (g_threads <= 0) g_threads = 1;
#ifdef BITNET_HAVE_OPENBLAS
  openblas_set_num_threads(g_threads);
  std::printf("OpenBLAS: %s, %d threads\n", openblas_get_config(), g_threads);
#else
  std::printf("OpenBLAS: not built in (no baseline)\n");
#endif
  std::printf("ternary CPU path: %s kernels, %d threads; K = N = %ld\n",
              bitnet::CpuHasAvx2() ? "AVX2" : "scalar", g_threads, static_cast<long>(kK));

  for (int64_t m : kMs) {
    benchmark::RegisterBenchmark("ternary_int8", BM_TernaryInt8)
        ->ArgName("M")->Arg(m)->Unit(benchmark::kMillisecond)->UseRealTime();
#ifdef BITNET_HAVE_OPENBLAS
    benchmark::RegisterBenchmark("openblas_sgemm", BM_OpenBlasSgemm)
        ->ArgName("M")->Arg(m)->Unit(benchmark::kMillisecond)->UseRealTime();
#endif
    benchmark::RegisterBenchmark("ternary_none", BM_TernaryNone)
        ->ArgName("M")->Arg(m)->Unit(benchmark::kMillisecond)->UseRealTime();
  }
  int rest_argc = static_cast<int>(rest.size());
  benchmark::Initialize(&rest_argc, rest.data());
  if (benchmark::ReportUnrecognizedArguments(rest_argc, rest.data())) return 2;
  CollectingReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();

  std::printf("\n| M | ternary int8 (ms) | OpenBLAS sgemm (ms) | speedup | ternary none (ms) |\n");
  std::printf("|---|---|---|---|---|\n");
  for (int64_t m : kMs) {
    auto get = [&](const std::string& name) {
      return reporter.Find(absl::StrFormat("%s/M:%d/", name, m));
    };
    const double tern = get("ternary_int8"), blas = get("openblas_sgemm"),
                 none = get("ternary_none");
    std::printf("| %ld | %.3f | %.3f | %s | %.3f |\n", static_cast<long>(m), tern, blas,
                tern > 0 && blas > 0 ? absl::StrFormat("%.2fx", blas / tern).c_str() : "n/a",
                none);
  }
  return 0;
}

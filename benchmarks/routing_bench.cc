// bitnet-bench routing: the server's routing and batching (ModelRegistry +
// DynamicBatcher, the real code) driven by closed-loop clients against
// simulated devices whose batch takes fixed_us + per_row_us x rows of
// sleep. It answers, without a GPU and without gRPC, how p99 and batch sizes
// of N instances with N x C clients compare with one instance and C
// clients at the same load per device (issue 9's "p99 no worse at the same
// per-GPU load"), and so whether a routing rule can close a gap measured on
// GPUs. The simulated devices sleep, so the benchmark needs little CPU; the
// absolute numbers depend on this host's sleep accuracy, the comparison
// between configurations on the same host does not.
//
//   bitnet-bench routing [--instances=1,2] [--clients_per_instance=16,32,64]
//       [--rows=32] [--fixed_us=1900] [--per_row_us=2.3] [--client_gap_us=150]
//       [--client_jitter_us=1500]
//       [--duration=5] [--warmup=1] [--preferred_batch_rows=128]
//       [--max_batch_rows=512] [--max_queue_delay_us=2000]
//       [--arrival_gap_us=250] [--completion_threads=8]
//       [--affinity=true] [--clients_per_connection=2]
//
// Each client sends a request of --rows rows, waits for its answer, waits
// --client_gap_us plus uniform(0, --client_jitter_us) (the network and the
// client's own work between an answer and its next request: answers of one
// batch reach their clients spread out), and sends the next. Reported per configuration:
// rows/s, latency p50/p99 (enqueue to answer), mean batch rows and each
// instance's share of the batches. The defaults model the deep demo model on
// an H100 in fp16 (RESULTS.md, session 4: ~260-row batches in ~2.5 ms,
// saturation ~163k rows/s with 512-row batches); with them the simulation
// reproduced that session's GPU measurements at 16 clients per device (p99,
// batch rows, for both routing rules then measured; RESULTS.md, session 5).
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/model/demo_model.h"
#include "server/registry/model_registry.h"
#include "server/runtime/backend.h"

int RunRoutingBenchmarks(int argc, char** argv);

namespace {

struct RoutingArgs {
  std::vector<int> instances = {1, 2};
  std::vector<int> clients_per_instance = {16, 32, 64};
  int64_t rows = 32;
  double fixed_us = 1900;
  double per_row_us = 2.3;
  double client_gap_us = 150;
  double client_jitter_us = 1500;
  double duration_s = 5;
  double warmup_s = 1;
  int64_t preferred_batch_rows = 128;
  int64_t max_batch_rows = 512;
  double max_queue_delay_us = 2000;
  double arrival_gap_us = 250;
  int completion_threads = 8;
  bool affinity = true;             // the server's --connection_affinity
  int clients_per_connection = 2;  // bitnet-load's spread in the GPU sweeps
};

// What the simulated devices of one configuration did.
struct DeviceTally {
  std::atomic<int64_t> batches{0};
  std::atomic<int64_t> rows{0};
  std::atomic<bool> counting{false};
};

// A device whose batch takes fixed_us + per_row_us x rows (a sleep) and
// answers zeros.
class SimulatedInstance final : public bitnet::ModelInstance {
 public:
  SimulatedInstance(const RoutingArgs& args, int64_t max_rows, int64_t out,
                    DeviceTally* tally)
      : args_(args), max_rows_(max_rows), out_(out), tally_(tally) {}

  absl::Status Forward(const float*, int64_t rows, float* output) override {
    absl::SleepFor(absl::Microseconds(args_.fixed_us + args_.per_row_us * rows));
    std::fill(output, output + rows * out_, 0.0f);
    if (tally_->counting.load()) {
      tally_->batches.fetch_add(1);
      tally_->rows.fetch_add(rows);
    }
    return absl::OkStatus();
  }
  int64_t max_rows() const override { return max_rows_; }
  std::string device() const override { return "sim"; }
  int64_t device_memory_bytes() const override { return 0; }

 private:
  const RoutingArgs& args_;
  const int64_t max_rows_;
  const int64_t out_;
  DeviceTally* const tally_;
};

class SimulatedBackend final : public bitnet::Backend {
 public:
  SimulatedBackend(const RoutingArgs& args, DeviceTally* tally) : args_(args), tally_(tally) {}
  absl::StatusOr<std::unique_ptr<bitnet::ModelInstance>> Load(const bitnet::Model& model,
                                                              int64_t max_rows) override {
    return std::make_unique<SimulatedInstance>(args_, max_rows,
                                               model.layers.back().spec.out_features, tally_);
  }
  std::string device() const override { return "sim"; }

 private:
  const RoutingArgs& args_;
  DeviceTally* const tally_;
};

struct Result {
  double rows_per_second = 0;
  double p50_ms = 0;
  double p99_ms = 0;
  double mean_batch_rows = 0;
  std::vector<double> batch_share;  // per instance
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5));
  return v[i];
}

absl::StatusOr<Result> RunOne(const RoutingArgs& args, int instances, int clients) {
  std::vector<std::unique_ptr<DeviceTally>> tallies;
  std::vector<std::shared_ptr<bitnet::Backend>> backends;
  for (int i = 0; i < instances; ++i) {
    tallies.push_back(std::make_unique<DeviceTally>());
    backends.push_back(std::make_shared<SimulatedBackend>(args, tallies.back().get()));
  }
  bitnet::ModelRegistryOptions options;
  options.batching.preferred_batch_rows = args.preferred_batch_rows;
  options.batching.max_batch_rows = args.max_batch_rows;
  options.batching.max_queue_rows = std::max<int64_t>(8192, clients * args.rows);
  options.batching.max_queue_delay = absl::Microseconds(args.max_queue_delay_us);
  options.batching.arrival_gap = absl::Microseconds(args.arrival_gap_us);
  options.batching.completion_threads = args.completion_threads;
  options.affinity = args.affinity;
  auto registry = bitnet::ModelRegistry::Create(backends, options);
  if (!registry.ok()) return registry.status();
  const bitnet::Model model = bitnet::MakeDemoModel(bitnet::DemoModelSize::kSmall);
  const int64_t in = model.layers.front().spec.in_features;
  if (auto loaded = (*registry)->Load("sim", model, "simulated"); !loaded.ok()) {
    return loaded.status();
  }

  const absl::Time start = absl::Now();
  const absl::Time count_from = start + absl::Seconds(args.warmup_s);
  const absl::Time end = count_from + absl::Seconds(args.duration_s);
  std::atomic<bool> counting{false};
  absl::Mutex mu;
  std::vector<double> latencies_ms;
  int64_t rows_answered = 0;
  std::vector<std::thread> threads;
  std::atomic<int> errors{0};
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      // Clients start spread over one batch time, not all at once.
      absl::SleepFor(absl::Microseconds((args.fixed_us * c) / clients));
      std::vector<double> mine;
      int64_t my_rows = 0;
      std::mt19937 rng(1234 + c);
      std::uniform_real_distribution<double> jitter(0.0, args.client_jitter_us);
      while (absl::Now() < end) {
        absl::Notification answered;
        bool ok = false;
        bitnet::BatchRequest request;
        request.input.assign(static_cast<size_t>(args.rows * in), 0.5f);
        request.rows = args.rows;
        // Client c's connection, as the service would key it.
        request.routing_key = 1 + c / args.clients_per_connection;
        request.on_done = [&](bitnet::RequestResult result) {
          ok = result.status.ok();
          answered.Notify();
        };
        const absl::Time sent = absl::Now();
        if (!(*registry)->Enqueue("sim", std::move(request)).ok()) {
          errors.fetch_add(1);
          absl::SleepFor(absl::Milliseconds(1));
          continue;
        }
        answered.WaitForNotification();
        const absl::Time got = absl::Now();
        if (!ok) errors.fetch_add(1);
        if (counting.load() && got < end) {
          mine.push_back(absl::ToDoubleMilliseconds(got - sent));
          my_rows += args.rows;
        }
        absl::SleepFor(absl::Microseconds(args.client_gap_us + jitter(rng)));
      }
      absl::MutexLock lock(&mu);
      latencies_ms.insert(latencies_ms.end(), mine.begin(), mine.end());
      rows_answered += my_rows;
    });
  }
  absl::SleepFor(count_from - absl::Now());
  counting.store(true);
  for (auto& t : tallies) t->counting.store(true);
  absl::SleepFor(end - absl::Now());
  for (auto& t : tallies) t->counting.store(false);
  for (std::thread& t : threads) t.join();
  (*registry)->Shutdown();
  if (errors.load() > 0) {
    return absl::InternalError(absl::StrCat(errors.load(), " requests failed"));
  }

  Result r;
  r.rows_per_second = rows_answered / args.duration_s;
  r.p50_ms = Percentile(latencies_ms, 0.50);
  r.p99_ms = Percentile(latencies_ms, 0.99);
  int64_t batches = 0, batch_rows = 0;
  for (auto& t : tallies) {
    batches += t->batches.load();
    batch_rows += t->rows.load();
  }
  r.mean_batch_rows = batches > 0 ? static_cast<double>(batch_rows) / batches : 0;
  for (auto& t : tallies) {
    r.batch_share.push_back(batches > 0 ? static_cast<double>(t->batches.load()) / batches : 0);
  }
  return r;
}

template <typename T>
bool ParseList(const std::string& text, std::vector<T>* out) {
  out->clear();
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    T v{};
    if (!absl::SimpleAtoi(part, &v) || v <= 0) return false;
    out->push_back(v);
  }
  return !out->empty();
}

int Usage(const std::string& message) {
  std::fprintf(stderr,
               "bitnet-bench routing: %s\n"
               "usage: bitnet-bench routing [--instances=1,2] "
               "[--clients_per_instance=16,32,64] [--rows=32] [--fixed_us=1900] "
               "[--per_row_us=2.3] [--client_gap_us=150] [--client_jitter_us=1500] "
               "[--duration=5] [--warmup=1] "
               "[--preferred_batch_rows=128] [--max_batch_rows=512] "
               "[--max_queue_delay_us=2000] [--arrival_gap_us=250] [--completion_threads=8] "
               "[--affinity=true] [--clients_per_connection=2]\n",
               message.c_str());
  return 2;
}

}  // namespace

int RunRoutingBenchmarks(int argc, char** argv) {
  RoutingArgs args;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) != 0 || eq == std::string::npos) {
      return Usage("expected --name=value, got '" + arg + "'");
    }
    const std::string key = arg.substr(2, eq - 2);
    const std::string value = arg.substr(eq + 1);
    bool ok = true;
    if (key == "instances") {
      ok = ParseList(value, &args.instances);
    } else if (key == "clients_per_instance") {
      ok = ParseList(value, &args.clients_per_instance);
    } else if (key == "rows") {
      ok = absl::SimpleAtoi(value, &args.rows) && args.rows > 0;
    } else if (key == "fixed_us") {
      ok = absl::SimpleAtod(value, &args.fixed_us) && args.fixed_us >= 0;
    } else if (key == "per_row_us") {
      ok = absl::SimpleAtod(value, &args.per_row_us) && args.per_row_us >= 0;
    } else if (key == "client_gap_us") {
      ok = absl::SimpleAtod(value, &args.client_gap_us) && args.client_gap_us >= 0;
    } else if (key == "client_jitter_us") {
      ok = absl::SimpleAtod(value, &args.client_jitter_us) && args.client_jitter_us >= 0;
    } else if (key == "duration") {
      ok = absl::SimpleAtod(value, &args.duration_s) && args.duration_s > 0;
    } else if (key == "warmup") {
      ok = absl::SimpleAtod(value, &args.warmup_s) && args.warmup_s >= 0;
    } else if (key == "preferred_batch_rows") {
      ok = absl::SimpleAtoi(value, &args.preferred_batch_rows) && args.preferred_batch_rows > 0;
    } else if (key == "max_batch_rows") {
      ok = absl::SimpleAtoi(value, &args.max_batch_rows) && args.max_batch_rows > 0;
    } else if (key == "max_queue_delay_us") {
      ok = absl::SimpleAtod(value, &args.max_queue_delay_us) && args.max_queue_delay_us >= 0;
    } else if (key == "arrival_gap_us") {
      ok = absl::SimpleAtod(value, &args.arrival_gap_us) && args.arrival_gap_us >= 0;
    } else if (key == "completion_threads") {
      ok = absl::SimpleAtoi(value, &args.completion_threads) && args.completion_threads > 0;
    } else if (key == "affinity") {
      ok = absl::SimpleAtob(value, &args.affinity);
    } else if (key == "clients_per_connection") {
      ok = absl::SimpleAtoi(value, &args.clients_per_connection) &&
           args.clients_per_connection > 0;
    } else {
      return Usage("unknown option --" + key);
    }
    if (!ok) return Usage("bad value for --" + key + ": '" + value + "'");
  }
  if (args.rows > args.max_batch_rows) return Usage("--rows must be <= --max_batch_rows");

  std::printf("simulated device: %.0f us + %.2f us/row per batch; %lld rows per request; "
              "client gap %.0f us + uniform(0, %.0f us); %.1f s per point after %.1f s "
              "warm-up; connection affinity %s (%d clients per connection)\n",
              args.fixed_us, args.per_row_us, static_cast<long long>(args.rows),
              args.client_gap_us, args.client_jitter_us, args.duration_s, args.warmup_s,
              args.affinity ? "on" : "off", args.clients_per_connection);
  std::printf("%9s %9s %8s %12s %8s %8s %10s  %s\n", "instances", "per inst", "clients",
              "rows/s", "p50 ms", "p99 ms", "batch rows", "batch share per instance");
  for (int per_instance : args.clients_per_instance) {
    for (int n : args.instances) {
      absl::StatusOr<Result> r = RunOne(args, n, n * per_instance);
      if (!r.ok()) {
        std::fprintf(stderr, "bitnet-bench routing: %s\n", r.status().ToString().c_str());
        return 1;
      }
      std::string shares;
      for (double s : r->batch_share) absl::StrAppend(&shares, absl::StrFormat(" %.2f", s));
      std::printf("%9d %9d %8d %12.0f %8.2f %8.2f %10.1f %s\n", n, per_instance,
                  n * per_instance, r->rows_per_second, r->p50_ms, r->p99_ms,
                  r->mean_batch_rows, shares.c_str());
      std::fflush(stdout);
    }
  }
  return 0;
}

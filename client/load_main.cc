// bitnet-load: load generator for bitnet-server (docs/client.md).
//
//   closed loop:  bitnet-load --concurrency 64 --duration 10s
//                 bitnet-load --concurrency 1:1024:*4 --duration 5s --chart sweep.png
//   open loop:    bitnet-load --rate 2000 --arrivals poisson --requests 20000
//                 bitnet-load --rate 500:4000:500 --duration 5s
//   streams:      bitnet-load --api stream --concurrency 64 --connections 4
//                 (requests as items of InferStream calls: client/load_streams.h)
//
// Every request goes through the gRPC callback API (Client::InferAsync): no
// thread per request, so thousands of requests can be in flight from a few
// gRPC threads. Closed loop: `concurrency` chains, each sending its next
// request from the previous one's completion. Open loop: --open_loop_threads
// scheduler threads, each an independent arrival process at rate / threads
// (Poisson processes add up to a Poisson process at the total rate; constant
// spacing is staggered), send requests at their arrival times,
// whatever the server's speed, and latency is measured from the intended
// arrival time (no coordinated omission); at most --max_outstanding requests
// are in flight, arrivals beyond it are counted as client_overflow.
//
// Measurement: --warmup first (not measured), then a window of --duration,
// or until --requests completions. Completions inside the window count
// (throughput = completions / window); latency percentiles are over the OK
// ones. The server's mean batch comes from /metrics deltas over the window
// (--metrics_url: bitnet_batch_rows_sum / _count{model=...}), or from
// Admin.GetStats with --admin_token_file.
//
// Exit codes: 0 ok; 1 the error fraction exceeded --max_error_rate, or the
// server/model could not be reached before the run; 2 usage error; 3 an
// output file could not be written.
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/chart.h"
#include "client/client.h"
#include "client/flag_args.h"
#include "client/load_stats.h"
#include "client/load_streams.h"

ABSL_FLAG(std::string, address, "localhost:50051",
          "server host:port, or ip:port,ip:port,... (round_robin over them)");
ABSL_FLAG(std::string, model, "demo", "model name");
ABSL_FLAG(uint64_t, model_version, 0, "model version (0 = latest)");
ABSL_FLAG(std::string, concurrency, "",
          "closed loop: requests in flight, or a sweep (1,4,16 | 1:1024:*4 | "
          "8:64:8)");
ABSL_FLAG(std::string, rate, "",
          "open loop: requests per second, or a sweep (same syntax)");
ABSL_FLAG(std::string, arrivals, "poisson", "open loop: poisson or constant");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(10),
          "measured window per point (ignored with --requests)");
ABSL_FLAG(int64_t, requests, 0,
          "measure this many completions per point instead of --duration");
ABSL_FLAG(absl::Duration, warmup, absl::Seconds(1),
          "unmeasured load before each point's window");
ABSL_FLAG(int64_t, rows_per_request, 1, "rows in each request");
ABSL_FLAG(int, connections, 1, "gRPC channels (TCP connections per address)");
ABSL_FLAG(std::string, api, "unary",
          "unary: one Infer call per request; stream: requests as items of "
          "long-lived InferStream calls (--streams_per_connection per "
          "connection; items share their stream's deadline)");
ABSL_FLAG(int, streams_per_connection, 1, "--api=stream: InferStream calls per connection");
ABSL_FLAG(std::string, dtype, "fp32", "input dtype on the wire: fp32, fp16, bf16");
ABSL_FLAG(std::string, output_dtype, "",
          "output dtype asked of the server: fp32, fp16, bf16 (empty: unset, "
          "which the server answers in fp32)");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(30), "deadline of each request");
ABSL_FLAG(int, open_loop_threads, 8,
          "open loop: threads that send requests (starting a call costs tens "
          "of microseconds: one thread cannot send much more than 20k/s)");
ABSL_FLAG(int64_t, max_outstanding, 10000,
          "open loop: most requests in flight; arrivals beyond count as "
          "client_overflow");
ABSL_FLAG(std::string, metrics_url, "",
          "server /metrics URL (http://host:9090/metrics) for the mean batch");
ABSL_FLAG(int64_t, preferred_batch_rows, 128,
          "the server's --preferred_batch_rows (the API does not expose it): "
          "a mean batch far below it triggers a warning");
ABSL_FLAG(std::string, admin_token_file, "",
          "admin token file: read the mean batch from Admin.GetStats when "
          "--metrics_url is not given");
ABSL_FLAG(std::string, json, "", "write results as JSON to FILE (- = stdout)");
ABSL_FLAG(std::string, csv, "", "write results as CSV to FILE (- = stdout)");
ABSL_FLAG(std::string, chart, "",
          "PNG chart of latency (p50, p99) against throughput (for sweeps)");
ABSL_FLAG(bool, progress, false,
          "live progress line on stderr even when it is not a terminal");
ABSL_FLAG(uint64_t, seed, 1, "seed of the random inputs and Poisson arrivals");
ABSL_FLAG(double, max_error_rate, 0.0,
          "exit 1 when more than this fraction of measured requests failed");
ABSL_FLAG(int, retries, 1,
          "attempts per request on UNAVAILABLE/RESOURCE_EXHAUSTED (1 = none: "
          "a load test should see errors as they happen)");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA bundle: use TLS and verify the server");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate (mTLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM client key (mTLS)");
ABSL_FLAG(std::string, tls_server_name, "", "expected server certificate name");

namespace bitnet {
namespace {

constexpr int kOk = 0;
constexpr int kFailed = 1;
constexpr int kUsage = 2;
constexpr int kOutputError = 3;
constexpr int kCodes = 17;  // gRPC status codes 0..16

int UsageError(absl::string_view message) {
  std::cerr << "bitnet-load: " << message << "\n(see bitnet-load --help)\n";
  return kUsage;
}

struct Config {
  bool closed = true;
  std::vector<double> points;  // concurrency or rate
  bool poisson = true;
  absl::Duration duration;
  int64_t requests = 0;
  absl::Duration warmup;
  int64_t rows_per_request = 1;
  int connections = 1;
  bool stream_api = false;
  int streams_per_connection = 1;
  absl::Duration timeout;
  int64_t max_outstanding = 0;
  int open_loop_threads = 1;
  std::string model;
  bool progress = false;
  bool progress_tty = false;
};

struct PointResult {
  double point = 0;  // concurrency or offered rate
  double seconds = 0;
  uint64_t completed = 0;
  uint64_t ok = 0;
  std::array<uint64_t, kCodes> codes{};
  uint64_t client_overflow = 0;
  double requests_per_second = 0;
  double rows_per_second = 0;
  double mean_ms = 0, p50_ms = 0, p90_ms = 0, p95_ms = 0, p99_ms = 0, max_ms = 0;
  std::optional<double> mean_batch_rows;
  std::optional<double> batches;
};

// Where the server's batch counters come from.
class BatchSource {
 public:
  struct Snapshot {
    double rows = 0;     // bitnet_batch_rows_sum or GetStats rows
    double batches = 0;  // bitnet_batch_rows_count or GetStats batches
  };
  virtual ~BatchSource() = default;
  virtual absl::StatusOr<Snapshot> Read() = 0;
};

class MetricsBatchSource : public BatchSource {
 public:
  MetricsBatchSource(std::string base, std::string path, std::string model)
      : http_(base), path_(std::move(path)), model_(std::move(model)) {
    http_.set_connection_timeout(2);
    http_.set_read_timeout(5);
  }
  absl::StatusOr<Snapshot> Read() override {
    auto response = http_.Get(path_);
    if (!response || response->status != 200) {
      return absl::UnavailableError(absl::StrCat(
          "GET ", path_, ": ",
          response ? absl::StrCat("HTTP ", response->status)
                   : httplib::to_string(response.error())));
    }
    auto sum = PrometheusValue(response->body, "bitnet_batch_rows_sum", model_);
    if (!sum.ok()) return sum.status();
    auto count = PrometheusValue(response->body, "bitnet_batch_rows_count", model_);
    if (!count.ok()) return count.status();
    return Snapshot{*sum, *count};
  }

 private:
  httplib::Client http_;
  std::string path_;
  std::string model_;
};

class StatsBatchSource : public BatchSource {
 public:
  StatsBatchSource(Client* client, std::string model)
      : client_(client), model_(std::move(model)) {}
  absl::StatusOr<Snapshot> Read() override {
    auto stats = client_->GetStats();
    if (!stats.ok()) return stats.status();
    for (const auto& m : stats->models()) {
      if (m.name() == model_) {
        return Snapshot{static_cast<double>(m.rows()), static_cast<double>(m.batches())};
      }
    }
    return absl::NotFoundError(absl::StrCat("GetStats has no model ", model_));
  }

 private:
  Client* client_;
  std::string model_;
};

// One measured point of the run. Callbacks (gRPC threads) and the driver
// thread share it through atomics only.
class LoadPoint {
 public:
  enum Phase : int { kWarmup = 0, kMeasure = 1, kStop = 2 };

  // `streams`: send requests as InferStream items (--api=stream), else
  // unary calls; not owned.
  LoadPoint(const Config& config, double point,
            std::vector<std::unique_ptr<Client>>* clients,
            const std::vector<std::shared_ptr<const v1::InferRequest>>* pool,
            StreamSender* streams)
      : config_(config), point_(point), clients_(clients), pool_(pool), streams_(streams) {
    for (auto& c : codes_) c.store(0);
  }

  PointResult Run(BatchSource* batches) {
    const absl::Time start = absl::Now();
    std::vector<std::thread> schedulers;
    if (config_.closed) {
      for (int64_t i = 0; i < static_cast<int64_t>(point_); ++i) {
        Issue(static_cast<size_t>(i), absl::Now());
      }
    } else {
      const int threads = config_.open_loop_threads;
      for (int t = 0; t < threads; ++t) {
        schedulers.emplace_back([this, t, threads] { Schedule(t, threads); });
      }
    }
    WaitFor(start + config_.warmup, "warmup");
    std::optional<BatchSource::Snapshot> before;
    if (batches != nullptr) {
      auto s = batches->Read();
      if (s.ok()) {
        before = *s;
      } else {
        Warn(absl::StrCat("mean batch unavailable: ", s.status().message()));
      }
    }
    t0_ = absl::Now();
    phase_.store(kMeasure);
    if (config_.requests > 0) {
      // The callback that counts the last completion sets kStop.
      while (phase_.load() == kMeasure) {
        WaitFor(absl::Now() + absl::Milliseconds(100), "measure");
      }
    } else {
      WaitFor(t0_ + config_.duration, "measure");
      t1_nanos_.store(absl::ToUnixNanos(absl::Now()));
      phase_.store(kStop);
    }
    const absl::Time t1 = absl::FromUnixNanos(t1_nanos_.load());
    std::optional<BatchSource::Snapshot> after;
    if (batches != nullptr && before.has_value()) {
      auto s = batches->Read();
      if (s.ok()) after = *s;
    }
    for (std::thread& t : schedulers) t.join();
    // Every call carries a deadline, so in-flight calls end by then.
    const absl::Time drain_deadline = absl::Now() + config_.timeout + absl::Seconds(5);
    bool warned = false;
    // Callbacks reference this object: wait for every one of them.
    while (outstanding_.load() > 0) {
      if (!warned && absl::Now() > drain_deadline) {
        Warn(absl::StrCat(outstanding_.load(),
                          " requests still outstanding past their deadline"));
        warned = true;
      }
      absl::SleepFor(absl::Milliseconds(5));
    }
    ClearProgress();

    PointResult r;
    r.point = point_;
    r.seconds = absl::ToDoubleSeconds(t1 - t0_);
    for (int c = 0; c < kCodes; ++c) {
      r.codes[c] = codes_[c].load();
      r.completed += r.codes[c];
    }
    r.ok = r.codes[0];
    r.client_overflow = overflow_.load();
    if (r.seconds > 0) {
      r.requests_per_second = r.ok / r.seconds;
      r.rows_per_second = r.requests_per_second * config_.rows_per_request;
    }
    r.mean_ms = latency_.mean_seconds() * 1e3;
    r.p50_ms = latency_.Percentile(0.50) * 1e3;
    r.p90_ms = latency_.Percentile(0.90) * 1e3;
    r.p95_ms = latency_.Percentile(0.95) * 1e3;
    r.p99_ms = latency_.Percentile(0.99) * 1e3;
    r.max_ms = latency_.max_seconds() * 1e3;
    if (before.has_value() && after.has_value()) {
      const double batches_delta = after->batches - before->batches;
      r.batches = batches_delta;
      if (batches_delta > 0) r.mean_batch_rows = (after->rows - before->rows) / batches_delta;
    }
    return r;
  }

 private:
  // Sends one request; `intended` is when it should have been sent (open
  // loop) or now (closed loop).
  void Issue(size_t chain, absl::Time intended) {
    const uint64_t n = sent_.fetch_add(1, std::memory_order_relaxed);
    auto request = (*pool_)[n % pool_->size()];
    outstanding_.fetch_add(1);
    if (streams_ != nullptr) {
      streams_->Send(chain, std::move(request), [this, chain, intended](absl::StatusCode code) {
        Complete(chain, intended, code);
      });
      return;
    }
    Client& client = *(*clients_)[chain % clients_->size()];
    client.InferAsync(std::move(request), config_.timeout,
                      [this, chain, intended](absl::StatusOr<v1::InferResponse> response) {
                        Complete(chain, intended, response.status().code());
                      });
  }

  void Complete(size_t chain, absl::Time intended, absl::StatusCode code) {
    const absl::Time now = absl::Now();
    if (phase_.load() == kMeasure) {
      bool count = true;
      if (config_.requests > 0) {
        const int64_t index = measured_.fetch_add(1);
        count = index < config_.requests;
        if (index == config_.requests - 1) {
          t1_nanos_.store(absl::ToUnixNanos(now));
          phase_.store(kStop);
        }
      }
      if (count) {
        const int c = static_cast<int>(code);
        codes_[c >= 0 && c < kCodes ? c : 2].fetch_add(1, std::memory_order_relaxed);
        if (code == absl::StatusCode::kOk) {
          latency_.Record(absl::ToDoubleSeconds(now - intended));
        }
      }
    }
    // Progress counters cover every phase.
    done_.fetch_add(1, std::memory_order_relaxed);
    if (config_.closed && phase_.load() != kStop) Issue(chain, absl::Now());
    outstanding_.fetch_sub(1);
  }

  // Open loop: arrival process `index` of `threads`, on its own thread, at
  // rate point_ / threads.
  void Schedule(int index, int threads) {
    const double rate = point_ / threads;
    std::mt19937_64 rng(absl::GetFlag(FLAGS_seed) + static_cast<uint64_t>(point_) +
                        1000003ULL * static_cast<uint64_t>(index));
    std::exponential_distribution<double> exponential(rate);
    const double spacing = 1.0 / rate;
    // Constant arrivals: thread i starts i / point_ seconds in, so the
    // threads' arrivals interleave evenly.
    absl::Time next = absl::Now() + absl::Seconds(config_.poisson ? 0.0 : index / point_);
    size_t chain = static_cast<size_t>(index);
    while (phase_.load() != kStop) {
      const absl::Time now = absl::Now();
      // Send everything that is due (a late wake-up sends a burst, as
      // a real arrival process would have).
      while (next <= now && phase_.load() != kStop) {
        if (outstanding_.load() >= config_.max_outstanding) {
          if (phase_.load() == kMeasure) overflow_.fetch_add(1);
        } else {
          Issue(chain, next);
          chain += static_cast<size_t>(threads);
        }
        next += absl::Seconds(config_.poisson ? exponential(rng) : spacing);
      }
      const absl::Duration wait = next - absl::Now();
      if (wait > absl::ZeroDuration()) {
        absl::SleepFor(std::min(wait, absl::Milliseconds(50)));
      }
    }
  }

  void Warn(const std::string& message) {
    ClearProgress();
    std::cerr << "bitnet-load: warning: " << message << "\n";
  }

  // Sleeps until `until` (or kStop), drawing the progress line every second.
  void WaitFor(absl::Time until, absl::string_view phase_name) {
    while (absl::Now() < until && phase_.load() != kStop) {
      absl::SleepFor(std::min(until - absl::Now(), absl::Milliseconds(100)));
      const absl::Time now = absl::Now();
      if (config_.progress && now - last_progress_ >= absl::Seconds(1)) {
        const uint64_t done = done_.load();
        const double rate =
            (done - last_done_) / absl::ToDoubleSeconds(now - last_progress_);
        uint64_t errors = 0;
        for (int c = 1; c < kCodes; ++c) errors += codes_[c].load();
        const std::string line = absl::StrFormat(
            "%s %s=%g %-7s %5.1fs  %8.0f req/s  p50 %.2fms  p99 %.2fms  errors %d  "
            "in flight %d",
            config_.closed ? "closed" : "open", config_.closed ? "concurrency" : "rate",
            point_, phase_name,
            absl::ToDoubleSeconds(now - (phase_name == "warmup" ? start_ : t0_)), rate,
            latency_.Percentile(0.5) * 1e3, latency_.Percentile(0.99) * 1e3, errors,
            outstanding_.load());
        if (config_.progress_tty) {
          std::cerr << "\r" << line << "\x1b[K" << std::flush;
          progress_dirty_ = true;
        } else {
          std::cerr << line << "\n";
        }
        last_progress_ = now;
        last_done_ = done;
      }
    }
  }

  void ClearProgress() {
    if (progress_dirty_) std::cerr << "\r\x1b[K" << std::flush;
    progress_dirty_ = false;
  }

  const Config& config_;
  const double point_;
  std::vector<std::unique_ptr<Client>>* clients_;
  const std::vector<std::shared_ptr<const v1::InferRequest>>* pool_;
  StreamSender* const streams_;

  std::atomic<int> phase_{kWarmup};
  std::atomic<uint64_t> sent_{0};
  std::atomic<uint64_t> done_{0};
  std::atomic<int64_t> outstanding_{0};
  std::atomic<int64_t> measured_{0};
  std::atomic<uint64_t> overflow_{0};
  std::atomic<int64_t> t1_nanos_{0};
  std::array<std::atomic<uint64_t>, kCodes> codes_;
  LatencyHistogram latency_;
  absl::Time t0_;
  const absl::Time start_ = absl::Now();
  absl::Time last_progress_ = absl::Now();
  uint64_t last_done_ = 0;
  bool progress_dirty_ = false;
};

std::string CodeName(int code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

nlohmann::json PointJson(const Config& config, const PointResult& r) {
  nlohmann::json codes = nlohmann::json::object();
  for (int c = 0; c < kCodes; ++c) {
    if (r.codes[c] > 0) codes[CodeName(c)] = r.codes[c];
  }
  nlohmann::json j = {
      {"mode", config.closed ? "closed" : "open"},
      {"concurrency", config.closed ? nlohmann::json(r.point) : nlohmann::json(nullptr)},
      {"offered_rate", config.closed ? nlohmann::json(nullptr) : nlohmann::json(r.point)},
      {"arrivals", config.closed ? "closed" : (config.poisson ? "poisson" : "constant")},
      {"rows_per_request", config.rows_per_request},
      {"connections", config.connections},
      {"seconds", r.seconds},
      {"requests", r.completed},
      {"ok", r.ok},
      {"errors", r.completed - r.ok},
      {"codes", codes},
      {"client_overflow", r.client_overflow},
      {"requests_per_second", r.requests_per_second},
      {"rows_per_second", r.rows_per_second},
      {"latency_ms",
       {{"mean", r.mean_ms}, {"p50", r.p50_ms}, {"p90", r.p90_ms}, {"p95", r.p95_ms},
        {"p99", r.p99_ms}, {"max", r.max_ms}}},
      {"mean_batch_rows",
       r.mean_batch_rows ? nlohmann::json(*r.mean_batch_rows) : nlohmann::json(nullptr)},
      {"batches", r.batches ? nlohmann::json(*r.batches) : nlohmann::json(nullptr)},
  };
  return j;
}

constexpr char kCsvHeader[] =
    "mode,concurrency,offered_rate,rows_per_request,seconds,requests,ok,errors,"
    "requests_per_second,rows_per_second,mean_ms,p50_ms,p90_ms,p95_ms,p99_ms,"
    "max_ms,mean_batch_rows,client_overflow,codes";

std::string PointCsv(const Config& config, const PointResult& r) {
  std::vector<std::string> codes;
  for (int c = 0; c < kCodes; ++c) {
    if (r.codes[c] > 0) codes.push_back(absl::StrCat(CodeName(c), "=", r.codes[c]));
  }
  return absl::StrFormat(
      "%s,%s,%s,%d,%.3f,%d,%d,%d,%.1f,%.1f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%s,%d,%s",
      config.closed ? "closed" : "open",
      config.closed ? absl::StrCat(r.point) : std::string(),
      config.closed ? std::string() : absl::StrCat(r.point), config.rows_per_request,
      r.seconds, r.completed, r.ok, r.completed - r.ok, r.requests_per_second,
      r.rows_per_second, r.mean_ms, r.p50_ms, r.p90_ms, r.p95_ms, r.p99_ms, r.max_ms,
      r.mean_batch_rows ? absl::StrFormat("%.2f", *r.mean_batch_rows) : std::string(),
      r.client_overflow, absl::StrJoin(codes, ";"));
}

void PrintTable(std::ostream& out, const Config& config,
                const std::vector<PointResult>& results) {
  out << absl::StrFormat("%-6s %10s %10s %10s %8s %8s %8s %8s %9s %8s %10s\n", "mode",
                         config.closed ? "conc" : "rate", "req/s", "rows/s", "p50_ms",
                         "p90_ms", "p95_ms", "p99_ms", "max_ms", "errors", "mean_batch");
  for (const PointResult& r : results) {
    out << absl::StrFormat(
        "%-6s %10g %10.1f %10.1f %8.3f %8.3f %8.3f %8.3f %9.3f %8d %10s\n",
        config.closed ? "closed" : "open", r.point, r.requests_per_second,
        r.rows_per_second, r.p50_ms, r.p90_ms, r.p95_ms, r.p99_ms, r.max_ms,
        r.completed - r.ok,
        r.mean_batch_rows ? absl::StrFormat("%.1f", *r.mean_batch_rows) : "n/a");
  }
  for (const PointResult& r : results) {
    if (r.ok == r.completed && r.client_overflow == 0) continue;
    std::vector<std::string> codes;
    for (int c = 0; c < kCodes; ++c) {
      if (r.codes[c] > 0) codes.push_back(absl::StrCat(CodeName(c), "=", r.codes[c]));
    }
    out << "status codes at " << (config.closed ? "concurrency " : "rate ") << r.point
        << ": " << absl::StrJoin(codes, " ");
    if (r.client_overflow > 0) {
      out << " client_overflow=" << r.client_overflow
          << " (raise --max_outstanding or lower --rate)";
    }
    out << "\n";
  }
}

absl::Status WriteText(const std::string& path, const std::string& text,
                       absl::string_view flag) {
  if (path == "-") {
    std::cout << text;
    return absl::OkStatus();
  }
  std::ofstream out(path, std::ios::trunc);
  out << text;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("--", flag, ": cannot write ", path));
  return absl::OkStatus();
}

int Main() {
  Config config;
  const std::string concurrency = absl::GetFlag(FLAGS_concurrency);
  const std::string rate = absl::GetFlag(FLAGS_rate);
  if (!concurrency.empty() && !rate.empty()) {
    return UsageError("give --concurrency (closed loop) or --rate (open loop), not both");
  }
  config.closed = rate.empty();
  auto points = ParseSweep(config.closed ? (concurrency.empty() ? "1" : concurrency) : rate,
                           config.closed ? "concurrency" : "rate",
                           /*integers=*/config.closed);
  if (!points.ok()) return UsageError(points.status().message());
  config.points = *points;
  if (config.closed && *std::max_element(config.points.begin(), config.points.end()) > 100000) {
    return UsageError("--concurrency: at most 100000");
  }
  const std::string arrivals = absl::GetFlag(FLAGS_arrivals);
  if (arrivals != "poisson" && arrivals != "constant") {
    return UsageError(absl::StrCat("--arrivals=", arrivals, ": expected poisson or constant"));
  }
  config.poisson = arrivals == "poisson";
  config.duration = absl::GetFlag(FLAGS_duration);
  config.requests = absl::GetFlag(FLAGS_requests);
  config.warmup = absl::GetFlag(FLAGS_warmup);
  config.rows_per_request = absl::GetFlag(FLAGS_rows_per_request);
  config.connections = absl::GetFlag(FLAGS_connections);
  const std::string api = absl::GetFlag(FLAGS_api);
  if (api != "unary" && api != "stream") {
    return UsageError(absl::StrCat("--api=", api, ": expected unary or stream"));
  }
  config.stream_api = api == "stream";
  config.streams_per_connection = absl::GetFlag(FLAGS_streams_per_connection);
  if (config.streams_per_connection < 1 || config.streams_per_connection > 1024) {
    return UsageError("--streams_per_connection: expected 1..1024");
  }
  config.timeout = absl::GetFlag(FLAGS_timeout);
  config.max_outstanding = absl::GetFlag(FLAGS_max_outstanding);
  config.open_loop_threads = absl::GetFlag(FLAGS_open_loop_threads);
  if (config.open_loop_threads < 1 || config.open_loop_threads > 256) {
    return UsageError("--open_loop_threads: expected 1..256");
  }
  config.model = absl::GetFlag(FLAGS_model);
  if (config.requests < 0) return UsageError("--requests: expected >= 0");
  if (config.requests == 0 && config.duration <= absl::ZeroDuration()) {
    return UsageError("--duration: expected > 0 (or give --requests)");
  }
  if (config.duration > absl::Hours(24)) return UsageError("--duration: at most 24h");
  if (config.warmup < absl::ZeroDuration()) return UsageError("--warmup: expected >= 0");
  if (config.rows_per_request < 1) return UsageError("--rows_per_request: expected >= 1");
  if (config.connections < 1 || config.connections > 1024) {
    return UsageError("--connections: expected 1..1024");
  }
  if (config.timeout <= absl::ZeroDuration()) return UsageError("--timeout: expected > 0");
  if (config.max_outstanding < 1) return UsageError("--max_outstanding: expected >= 1");
  if (config.model.empty()) return UsageError("--model: empty");
  const double max_error_rate = absl::GetFlag(FLAGS_max_error_rate);
  if (!(max_error_rate >= 0 && max_error_rate <= 1)) {
    return UsageError("--max_error_rate: expected 0..1");
  }
  v1::DType dtype;
  const std::string dtype_name = absl::AsciiStrToLower(absl::GetFlag(FLAGS_dtype));
  if (dtype_name == "fp32") {
    dtype = v1::DTYPE_FP32;
  } else if (dtype_name == "fp16") {
    dtype = v1::DTYPE_FP16;
  } else if (dtype_name == "bf16") {
    dtype = v1::DTYPE_BF16;
  } else {
    return UsageError(absl::StrCat("--dtype=", dtype_name, ": expected fp32, fp16 or bf16"));
  }
  v1::DType output_dtype = v1::DTYPE_UNSPECIFIED;
  const std::string output_dtype_name =
      absl::AsciiStrToLower(absl::GetFlag(FLAGS_output_dtype));
  if (output_dtype_name == "fp32") {
    output_dtype = v1::DTYPE_FP32;
  } else if (output_dtype_name == "fp16") {
    output_dtype = v1::DTYPE_FP16;
  } else if (output_dtype_name == "bf16") {
    output_dtype = v1::DTYPE_BF16;
  } else if (!output_dtype_name.empty()) {
    return UsageError(absl::StrCat("--output_dtype=", output_dtype_name,
                                   ": expected fp32, fp16, bf16 or empty"));
  }
  const int retries = absl::GetFlag(FLAGS_retries);
  if (retries < 1 || retries > 5) return UsageError("--retries: expected 1..5");
  std::unique_ptr<BatchSource> batch_source;
  std::string admin_token;
  if (const std::string file = absl::GetFlag(FLAGS_admin_token_file); !file.empty()) {
    std::ifstream in(file);
    std::stringstream buffer;
    buffer << in.rdbuf();
    admin_token = std::string(absl::StripAsciiWhitespace(buffer.str()));
    if (!in || admin_token.empty()) {
      return UsageError(absl::StrCat("--admin_token_file: cannot read a token from ", file));
    }
  }
  if (const std::string url = absl::GetFlag(FLAGS_metrics_url); !url.empty()) {
    auto split = SplitHttpUrl(url);
    if (!split.ok()) return UsageError(split.status().message());
    batch_source = std::make_unique<MetricsBatchSource>(split->first, split->second,
                                                        config.model);
  }
  const bool tty = isatty(STDERR_FILENO) == 1;
  config.progress = tty || absl::GetFlag(FLAGS_progress);
  config.progress_tty = tty;

  // One Client per connection; each opens its own TCP connection(s) and, for
  // several addresses, balances over them with round_robin.
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < config.connections; ++i) {
    ClientOptions options;
    options.address = absl::GetFlag(FLAGS_address);
    options.timeout = config.timeout;
    options.own_connection = true;
    options.retry.enabled = retries > 1;
    if (retries > 1) options.retry.max_attempts = retries;
    options.tls_ca = absl::GetFlag(FLAGS_tls_ca);
    options.tls_cert = absl::GetFlag(FLAGS_tls_cert);
    options.tls_key = absl::GetFlag(FLAGS_tls_key);
    options.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
    options.admin_token = admin_token;
    auto client = Client::Create(options);
    if (!client.ok()) return UsageError(client.status().message());
    clients.push_back(*std::move(client));
  }
  // The model's width, and a first call on every connection (so connection
  // set-up is not measured).
  int64_t features = 0;
  for (auto& client : clients) {
    auto info = client->GetModel(config.model, absl::GetFlag(FLAGS_model_version));
    if (!info.ok()) {
      std::cerr << "bitnet-load: GetModel(" << config.model << ") failed: "
                << absl::StatusCodeToString(info.status().code()) << ": "
                << info.status().message() << "\n";
      return kFailed;
    }
    if (info->input_shape_size() != 2 || info->input_shape(1) <= 0) {
      std::cerr << "bitnet-load: GetModel: input_shape is not [-1, features]\n";
      return kFailed;
    }
    features = info->input_shape(1);
    if (config.rows_per_request > info->max_request_rows() &&
        info->max_request_rows() > 0) {
      return UsageError(absl::StrCat("--rows_per_request=", config.rows_per_request,
                                     " exceeds the server's max_request_rows=",
                                     info->max_request_rows()));
    }
  }
  if (batch_source == nullptr && !admin_token.empty()) {
    batch_source = std::make_unique<StatsBatchSource>(clients[0].get(), config.model);
  }

  // A pool of distinct random requests, sent in turn (a server cache could
  // not make repeated identical inputs look faster, but varied data is
  // cheap insurance).
  std::vector<std::shared_ptr<const v1::InferRequest>> pool;
  std::mt19937_64 rng(absl::GetFlag(FLAGS_seed));
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  for (int i = 0; i < 16; ++i) {
    std::vector<float> values(static_cast<size_t>(config.rows_per_request * features));
    for (float& v : values) v = uniform(rng);
    auto request = MakeInferRequest(config.model, values, features,
                                    absl::GetFlag(FLAGS_model_version), dtype);
    if (!request.ok()) return UsageError(request.status().message());
    request->set_output_dtype(output_dtype);
    pool.push_back(std::make_shared<const v1::InferRequest>(*std::move(request)));
  }

  std::vector<PointResult> results;
  for (double point : config.points) {
    // Streams live for one point: its warm-up, window (or up to an hour for
    // --requests) and the drain of its last requests.
    std::unique_ptr<StreamSender> streams;
    if (config.stream_api) {
      const absl::Duration window = config.requests > 0 ? absl::Hours(1) : config.duration;
      streams = std::make_unique<StreamSender>(clients, config.streams_per_connection,
                                               config.warmup + window + config.timeout +
                                                   absl::Seconds(30));
    }
    LoadPoint load(config, point, &clients, &pool, streams.get());
    results.push_back(load.Run(batch_source.get()));
    if (streams != nullptr) streams->Close();
  }

  // Report.
  const std::string json_path = absl::GetFlag(FLAGS_json);
  const std::string csv_path = absl::GetFlag(FLAGS_csv);
  const bool table_to_stderr = json_path == "-" || csv_path == "-";
  PrintTable(table_to_stderr ? std::cerr : std::cout, config, results);
  const int64_t preferred = absl::GetFlag(FLAGS_preferred_batch_rows);
  for (const PointResult& r : results) {
    if (!r.mean_batch_rows || preferred <= 0) continue;
    // Little's law: rows the client kept in flight on average.
    const double in_flight = r.rows_per_second * r.mean_ms / 1e3;
    if (*r.mean_batch_rows < 0.25 * preferred) {
      std::cerr << absl::StrFormat(
          "bitnet-load: warning: at %s %g the server's mean batch was %.1f rows, far "
          "below preferred_batch_rows=%d; ",
          config.closed ? "concurrency" : "rate", r.point, *r.mean_batch_rows,
          preferred);
      if (in_flight < preferred) {
        std::cerr << absl::StrFormat(
            "only %.0f rows were in flight on average: raise --concurrency, --rate "
            "or --rows_per_request to fill batches\n",
            in_flight);
      } else {
        std::cerr << absl::StrFormat(
            "%.0f rows were in flight on average, so the batcher dispatches before "
            "batches fill (is --max_queue_delay shorter than a batch's compute "
            "time?)\n",
            in_flight);
      }
    }
  }

  int code = kOk;
  if (!json_path.empty()) {
    nlohmann::json doc;
    doc["config"] = {{"address", absl::GetFlag(FLAGS_address)},
                     {"model", config.model},
                     {"mode", config.closed ? "closed" : "open"},
                     {"rows_per_request", config.rows_per_request},
                     {"connections", config.connections},
                     {"api", config.stream_api ? "stream" : "unary"},
                     {"streams_per_connection",
                      config.stream_api ? nlohmann::json(config.streams_per_connection)
                                        : nlohmann::json(nullptr)},
                     {"duration_seconds", absl::ToDoubleSeconds(config.duration)},
                     {"requests", config.requests},
                     {"warmup_seconds", absl::ToDoubleSeconds(config.warmup)},
                     {"features", features},
                     {"dtype", dtype_name}};
    doc["points"] = nlohmann::json::array();
    for (const PointResult& r : results) doc["points"].push_back(PointJson(config, r));
    if (absl::Status s = WriteText(json_path, doc.dump(2) + "\n", "json"); !s.ok()) {
      std::cerr << "bitnet-load: " << s.message() << "\n";
      code = kOutputError;
    }
  }
  if (!csv_path.empty()) {
    std::string text = std::string(kCsvHeader) + "\n";
    for (const PointResult& r : results) text += PointCsv(config, r) + "\n";
    if (absl::Status s = WriteText(csv_path, text, "csv"); !s.ok()) {
      std::cerr << "bitnet-load: " << s.message() << "\n";
      code = kOutputError;
    }
  }
  if (const std::string chart_path = absl::GetFlag(FLAGS_chart); !chart_path.empty()) {
    ChartSeries p50, p99;
    p50.name = "p50";
    p99.name = "p99";
    for (const PointResult& r : results) {
      if (r.ok == 0) continue;
      p50.x.push_back(r.rows_per_second);
      p50.y.push_back(r.p50_ms);
      p99.x.push_back(r.rows_per_second);
      p99.y.push_back(r.p99_ms);
    }
    ChartOptions options;
    options.title = absl::StrCat(config.model, ": latency vs throughput (",
                                 config.closed ? "closed loop" : "open loop", ")");
    options.x_label = "throughput (rows/s)";
    options.y_label = "latency (ms)";
    options.log_y = true;
    absl::Status s = p50.x.empty()
                         ? absl::FailedPreconditionError("no point had an OK request")
                         : WriteLineChartPng(chart_path, options, {p50, p99});
    if (!s.ok()) {
      std::cerr << "bitnet-load: --chart: " << s.message() << "\n";
      code = kOutputError;
    }
  }
  uint64_t completed = 0, failed = 0;
  for (const PointResult& r : results) {
    completed += r.completed;
    failed += r.completed - r.ok;
  }
  if (completed == 0) {
    std::cerr << "bitnet-load: no request completed in the measured window\n";
    return kFailed;
  }
  const double error_rate = static_cast<double>(failed) / completed;
  if (error_rate > max_error_rate) {
    std::cerr << absl::StrFormat(
        "bitnet-load: %d of %d measured requests failed (%.2f%% > --max_error_rate "
        "%.2f%%)\n",
        failed, completed, error_rate * 100, max_error_rate * 100);
    return kFailed;
  }
  return code;
}

}  // namespace
}  // namespace bitnet

int main(int argc, char** argv) {
  // Debian's Abseil is built without NDEBUG: its mutex deadlock detector
  // (one global lock) would throttle the load generator's threads.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  std::vector<std::string> positional;
  std::string error;
  switch (bitnet::ParseFlagArgs(argc, argv, &positional, &error)) {
    case bitnet::FlagParse::kHelp:
      std::cout << "bitnet-load: load generator for bitnet-server (closed loop "
                   "--concurrency, open loop --rate; sweeps a:b:step or "
                   "a:b:*factor). See docs/client.md.\nflags:\n"
                << bitnet::FlagsHelp("client/load_main.cc");
      return 0;
    case bitnet::FlagParse::kError:
      return bitnet::UsageError(error);
    case bitnet::FlagParse::kOk:
      break;
  }
  if (!positional.empty()) {
    return bitnet::UsageError(absl::StrCat("unexpected argument \"", positional[0], "\""));
  }
  return bitnet::Main();
}

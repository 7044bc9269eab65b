// bitnet-soak: mixed load against a real bitnet-server process for a fixed
// time, every answer checked against the CPU oracle (ReferenceForward of the
// exact weights of the version that answered), the server's resident memory
// sampled throughout (docs/reliability.md, "Soak").
//
// What runs at once:
//   - unary Infer from --unary_clients threads (1-16 rows, FP32/FP16/BF16
//     output) over 4 HTTP/2 connections, on "demo" and on "second";
//   - InferStream from --stream_clients threads, 8 requests in flight each,
//     new stream every 64 requests;
//   - a loader: LoadModel of "second" from two different files in turn,
//     UnloadModel of single versions and of the whole model;
//   - a fine-tuner: Admin.FineTune of "demo" (SGD, mse, a few steps) in a
//     loop; each new version is written with SaveModel and read back, and
//     those weights are its oracle;
//   - a sampler: VmRSS of the server from /proc/<pid>/status every second.
//
// Counted per answer: ok (equal to the oracle bit for bit), wrong, not_found
// (only allowed for "second" while it is unloaded), lost (any other error,
// or a stream request never answered), unverified (a version whose weights
// never became known). Answers from a version whose weights are not known
// yet (a fine-tune or load that has not returned) wait until they are.
//
// Exit status 0 when wrong = lost = unverified = 0, the server exits 0 on
// SIGTERM at the end, and RSS growth (the mean of the last 10% of samples
// minus the mean of the samples just after the warm-up) stays under
// --max_rss_growth_mb; 1 otherwise. The report is printed and, with
// --report=FILE, written there too.
//
// Usage: bitnet-soak --server=PATH [--duration=600s] [--unary_clients=8]
//        [--stream_clients=2] [--warmup=...] [--max_rss_growth_mb=64]
//        [--cpu_threads=1] [--report=FILE] [--keep_dir]
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "fault_server_process.h"
#include "server/model/demo_model.h"
#include "server/model/model.h"
#include "server/model/model_file.h"
#include "server/model/reference_forward.h"

namespace bitnet {
namespace {

using ::bitnet::testing::ScratchDir;
using ::bitnet::testing::ServerProcess;

constexpr char kToken[] = "soak-admin-token-0123456789abcdef";
constexpr int64_t kIn = 64;
constexpr int64_t kOut = 32;

// Which of the soak's 4 connections (clients) this thread drives; -1 for
// none. Set once per worker thread, read by the error tally.
thread_local int connection_of_this_thread = -1;

// The last `n` lines of `text`.
std::string LastLines(const std::string& text, int n) {
  size_t from = text.size();
  if (from > 0 && text[from - 1] == '\n') --from;  // not a line of its own
  for (int i = 0; i < n; ++i) {
    const size_t newline = from == 0 ? std::string::npos : text.rfind('\n', from - 1);
    if (newline == std::string::npos) return text;
    from = newline;
  }
  return text.substr(from + 1);
}

struct Flags {
  std::string server;
  absl::Duration duration = absl::Minutes(10);
  absl::Duration warmup = absl::ZeroDuration();  // 0: 15% of the duration, >= 5 s
  int unary_clients = 8;
  int stream_clients = 2;
  double max_rss_growth_mb = 64;
  int cpu_threads = 1;
  std::string report;
  bool keep_dir = false;
};

bool ParseFlags(int argc, char** argv, Flags* f) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    const std::string key = arg.substr(0, eq);
    const std::string value = eq == std::string::npos ? "" : arg.substr(eq + 1);
    bool ok = true;
    if (key == "--server") {
      f->server = value;
    } else if (key == "--duration") {
      ok = absl::ParseDuration(value, &f->duration);
    } else if (key == "--warmup") {
      ok = absl::ParseDuration(value, &f->warmup);
    } else if (key == "--unary_clients") {
      ok = absl::SimpleAtoi(value, &f->unary_clients) && f->unary_clients >= 1;
    } else if (key == "--stream_clients") {
      ok = absl::SimpleAtoi(value, &f->stream_clients) && f->stream_clients >= 0;
    } else if (key == "--max_rss_growth_mb") {
      ok = absl::SimpleAtod(value, &f->max_rss_growth_mb);
    } else if (key == "--cpu_threads") {
      ok = absl::SimpleAtoi(value, &f->cpu_threads);
    } else if (key == "--report") {
      f->report = value;
    } else if (key == "--keep_dir") {
      f->keep_dir = true;
    } else {
      std::fprintf(stderr, "bitnet-soak: unknown flag %s\n", arg.c_str());
      return false;
    }
    if (!ok) {
      std::fprintf(stderr, "bitnet-soak: bad value in %s\n", arg.c_str());
      return false;
    }
  }
  if (f->server.empty()) {
    std::fprintf(stderr, "bitnet-soak: --server=PATH (bitnet-server) is required\n");
    return false;
  }
  if (f->warmup == absl::ZeroDuration()) {
    f->warmup = std::max(absl::Seconds(5), f->duration * 0.15);
  }
  return true;
}

std::vector<float> RandomRows(int64_t rows, int64_t cols, uint64_t seed) {
  DemoRandom rng(seed);
  std::vector<float> v(static_cast<size_t>(rows * cols));
  for (float& x : v) x = static_cast<float>(rng.NextNormal());
  return v;
}

// The demo model with other biases: same shape, different answers.
Model SecondVariant() {
  Model m = MakeDemoModel(DemoModelSize::kSmall);
  for (float& b : m.layers.back().bias) b += 0.25f;
  return m;
}

struct Counters {
  std::atomic<int64_t> ok{0};
  std::atomic<int64_t> ok_rows{0};
  std::atomic<int64_t> wrong{0};
  std::atomic<int64_t> not_found{0};
  std::atomic<int64_t> unavailable{0};
  std::atomic<int64_t> lost{0};
  std::atomic<int64_t> stream_requests{0};
  std::atomic<int64_t> unary_requests{0};
  std::atomic<int64_t> loads{0};
  std::atomic<int64_t> unloads{0};
  std::atomic<int64_t> finetunes{0};
  std::atomic<int64_t> admin_errors{0};
  std::atomic<int64_t> waited_for_oracle{0};
};

// (model, version) -> the exact weights, and answers waiting for them.
class Oracle {
 public:
  explicit Oracle(Counters* counters) : counters_(counters) {}

  void Add(const std::string& model, uint64_t version, std::shared_ptr<const Model> weights) {
    std::vector<Pending> ready;
    {
      absl::MutexLock lock(&mu_);
      models_[{model, version}] = weights;
      for (auto it = pending_.begin(); it != pending_.end();) {
        if (it->model == model && it->version == version) {
          ready.push_back(std::move(*it));
          it = pending_.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (const Pending& p : ready) Compare(*weights, p.x, p.y, p.rows, p.dtype);
  }

  // Checks one answer now, or once the version's weights are known.
  void Check(const std::string& model, uint64_t version, std::vector<float> x,
             std::vector<float> y, int64_t rows, v1::DType dtype) {
    std::shared_ptr<const Model> weights;
    {
      absl::MutexLock lock(&mu_);
      auto it = models_.find({model, version});
      if (it == models_.end()) {
        ++counters_->waited_for_oracle;
        pending_.push_back({model, version, std::move(x), std::move(y), rows, dtype});
        return;
      }
      weights = it->second;
    }
    Compare(*weights, x, y, rows, dtype);
  }

  // Answers whose version never became known.
  std::map<std::string, int64_t> Unresolved() {
    absl::MutexLock lock(&mu_);
    std::map<std::string, int64_t> out;
    for (const Pending& p : pending_) ++out[absl::StrCat(p.model, " v", p.version)];
    return out;
  }

 private:
  struct Pending {
    std::string model;
    uint64_t version;
    std::vector<float> x;
    std::vector<float> y;
    int64_t rows;
    v1::DType dtype;
  };
  // The oracle's fp32 output, rounded through the answer's dtype the way
  // the server encodes it (round to nearest even), must equal the answer.
  void Compare(const Model& weights, const std::vector<float>& x, const std::vector<float>& y,
               int64_t rows, v1::DType dtype) {
    std::vector<float> expect(static_cast<size_t>(rows * kOut));
    bool same = ReferenceForward(weights, x.data(), rows, expect.data()).ok();
    if (same && dtype != v1::DTYPE_FP32) {
      auto rounded = DecodeTensor(*MakeTensor(expect, kOut, dtype));
      same = rounded.ok();
      if (same) expect = *std::move(rounded);
    }
    same = same && expect == y;
    if (same) {
      ++counters_->ok;
      counters_->ok_rows += rows;
    } else {
      ++counters_->wrong;
    }
  }

  Counters* const counters_;
  absl::Mutex mu_;
  std::map<std::pair<std::string, uint64_t>, std::shared_ptr<const Model>> models_
      ABSL_GUARDED_BY(mu_);
  std::vector<Pending> pending_ ABSL_GUARDED_BY(mu_);
};

class Soak {
 public:
  Soak(Flags flags, const std::string& repo, ServerProcess* server)
      : flags_(std::move(flags)), repo_(repo), server_(server), oracle_(&counters_) {
    for (int i = 0; i < 4; ++i) {
      ClientOptions o;
      o.address = server_->address();
      o.timeout = absl::Seconds(60);
      o.admin_token = kToken;
      o.own_connection = true;
      // A call made while its connection is being (re)established waits
      // for it instead of failing fast: once, on a loaded 2-core CI
      // machine, one connection failed to connect for about 2 s ("No such
      // file or directory") and each of its threads counted thousands of
      // instant UNAVAILABLEs as lost. Calls already sent on a connection
      // that drops still fail and still count as lost; the deadline (60 s)
      // bounds the wait, so an unreachable server fails the soak as before.
      o.wait_for_ready = true;
      clients_.push_back(*Client::Create(o));
    }
    demo_ = std::make_shared<const Model>(MakeDemoModel(DemoModelSize::kSmall));
    second_a_ = std::make_shared<const Model>(MakeDemoModel(DemoModelSize::kSmall));
    second_b_ = std::make_shared<const Model>(SecondVariant());
    oracle_.Add("demo", 1, demo_);
  }

  int Run() {
    start_ = absl::Now();
    const absl::Time start = start_;
    end_ = start + flags_.duration;
    std::vector<std::thread> threads;
    for (int i = 0; i < flags_.unary_clients; ++i) {
      threads.emplace_back([this, i] {
        connection_of_this_thread = i % 4;
        Unary(clients_[i % 4].get(), 1000 + i);
      });
    }
    for (int i = 0; i < flags_.stream_clients; ++i) {
      threads.emplace_back([this, i] {
        connection_of_this_thread = (i + 1) % 4;
        Streams(clients_[(i + 1) % 4].get(), 2000 + i);
      });
    }
    threads.emplace_back([this] {
      connection_of_this_thread = 2;
      Loader(clients_[2].get());
    });
    threads.emplace_back([this] {
      connection_of_this_thread = 3;
      FineTuner(clients_[3].get());
    });

    // RSS samples and a progress line every 30 s.
    std::vector<std::pair<double, int64_t>> rss;  // (seconds since start, KiB)
    absl::Time next_progress = start + absl::Seconds(30);
    while (absl::Now() < end_ && server_->Running()) {
      rss.emplace_back(absl::ToDoubleSeconds(absl::Now() - start), server_->RssKb());
      if (absl::Now() >= next_progress) {
        std::printf("[%4.0f s] ok=%lld wrong=%lld lost=%lld rss=%lld KiB versions: "
                    "loads=%lld finetunes=%lld\n",
                    absl::ToDoubleSeconds(absl::Now() - start),
                    static_cast<long long>(counters_.ok.load()),
                    static_cast<long long>(counters_.wrong.load()),
                    static_cast<long long>(counters_.lost.load()),
                    static_cast<long long>(rss.back().second),
                    static_cast<long long>(counters_.loads.load()),
                    static_cast<long long>(counters_.finetunes.load()));
        std::fflush(stdout);
        next_progress += absl::Seconds(30);
      }
      absl::SleepFor(absl::Seconds(1));
    }
    const bool crashed = !server_->Running();
    stop_ = true;
    for (std::thread& t : threads) t.join();
    const double ran = absl::ToDoubleSeconds(absl::Now() - start);

    // Exit on SIGTERM with the load finished and the clients disconnected
    // (idle connections would add 1 s: fault_test covers that case).
    clients_.clear();
    const absl::Time signalled = absl::Now();
    server_->Signal(SIGTERM);
    const std::optional<int> exit_status = server_->WaitExit(absl::Seconds(60));
    const double exit_seconds = absl::ToDoubleSeconds(absl::Now() - signalled);
    const bool clean_exit = exit_status.has_value() && WIFEXITED(*exit_status) &&
                            WEXITSTATUS(*exit_status) == 0;

    // RSS: baseline = mean over the 10 s after the warm-up; end = mean of
    // the last 10% of the samples.
    const double warmup = absl::ToDoubleSeconds(flags_.warmup);
    double base_sum = 0, end_sum = 0, peak = 0;
    int base_n = 0, end_n = 0;
    // (At least the last sample: a short run may have none in its last 10%.)
    const double end_from = rss.empty() ? ran * 0.9 : std::min(ran * 0.9, rss.back().first);
    for (const auto& [t, kb] : rss) {
      if (kb < 0) continue;
      peak = std::max(peak, static_cast<double>(kb));
      if (t >= warmup && t < warmup + 10) {
        base_sum += kb;
        ++base_n;
      }
      if (t >= end_from) {
        end_sum += kb;
        ++end_n;
      }
    }
    const double base_mb = base_n > 0 ? base_sum / base_n / 1024 : -1;
    const double end_mb = end_n > 0 ? end_sum / end_n / 1024 : -1;
    const double growth_mb = end_mb - base_mb;
    const double first_mb = rss.empty() ? -1 : rss.front().second / 1024.0;

    const std::map<std::string, int64_t> unresolved = oracle_.Unresolved();
    int64_t unverified = 0;
    for (const auto& [what, n] : unresolved) unverified += n;

    std::string report = absl::StrFormat(
        "soak: %.0f s, %d unary + %d stream clients, server --cpu_threads=%d\n"
        "  answers: ok=%d (rows %d) wrong=%d lost=%d unverified=%d; \"second\" between "
        "load and unload: not_found=%d unavailable=%d; waited_for_oracle=%d\n"
        "  requests: unary=%d stream=%d; admin: loads=%d unloads=%d finetunes=%d "
        "admin_errors=%d\n"
        "  server RSS: start %.1f MB, after warm-up (%.0f s) %.1f MB, end %.1f MB, peak %.1f "
        "MB; growth %.1f MB (bound %.0f MB)\n"
        "  server crashed during the run: %s; exit on SIGTERM: %s after %.1f s\n",
        ran, flags_.unary_clients, flags_.stream_clients, flags_.cpu_threads,
        counters_.ok.load(), counters_.ok_rows.load(), counters_.wrong.load(),
        counters_.lost.load(), unverified, counters_.not_found.load(),
        counters_.unavailable.load(),
        counters_.waited_for_oracle.load(), counters_.unary_requests.load(),
        counters_.stream_requests.load(), counters_.loads.load(), counters_.unloads.load(),
        counters_.finetunes.load(), counters_.admin_errors.load(), first_mb, warmup, base_mb,
        end_mb, peak / 1024, growth_mb, flags_.max_rss_growth_mb, crashed ? "YES" : "no",
        clean_exit ? "exit 0" : "FAILED", exit_seconds);
    {
      absl::MutexLock lock(&mu_);
      for (const auto& [message, seen] : errors_) {
        absl::StrAppend(&report, absl::StrFormat("  error x%d (%.1f s to %.1f s, connections",
                                                 seen.count, seen.first_s, seen.last_s));
        for (int c = 0; c < 4; ++c) {
          if (seen.connections & (1u << c)) absl::StrAppend(&report, " ", c);
        }
        absl::StrAppend(&report, "): ", message, "\n");
      }
    }
    for (const auto& [what, n] : unresolved) {
      absl::StrAppend(&report, "  unverified x", n, ": ", what, "\n");
    }
    absl::StrAppend(&report, "  RSS samples (s: MB):");
    const size_t step = std::max<size_t>(1, rss.size() / 20);
    for (size_t i = 0; i < rss.size(); i += step) {
      absl::StrAppend(&report, absl::StrFormat(" %.0f:%.1f", rss[i].first, rss[i].second / 1024.0));
    }
    absl::StrAppend(&report, "\n");
    const bool pass = !crashed && clean_exit && counters_.wrong.load() == 0 &&
                      counters_.lost.load() == 0 && unverified == 0 &&
                      counters_.ok.load() > 0 && base_mb > 0 && end_mb > 0 &&
                      growth_mb <= flags_.max_rss_growth_mb;
    absl::StrAppend(&report, pass ? "PASS\n" : "FAIL\n");
    std::fputs(report.c_str(), stdout);
    std::fflush(stdout);  // before the server log below, on stderr
    if (!flags_.report.empty()) std::ofstream(flags_.report) << report;
    // The server's own account (its log) of a failed run: whole after a
    // crash, else its last lines, next to the client-side errors above.
    if (crashed || !clean_exit) {
      std::fputs(server_->Log().c_str(), stderr);
    } else if (!pass) {
      std::fprintf(stderr, "last lines of the server log:\n%s", LastLines(server_->Log(), 40).c_str());
    }
    return pass ? 0 : 1;
  }

 private:
  bool Done() const { return stop_.load() || absl::Now() >= end_; }

  // Counted by message, with when (seconds since the start) and on which of
  // the 4 connections: a report then tells a blip of one connection from a
  // server-wide outage.
  void Error(const std::string& what) {
    const double at = absl::ToDoubleSeconds(absl::Now() - start_);
    absl::MutexLock lock(&mu_);
    ErrorSeen& seen = errors_[what.substr(0, 200)];
    if (seen.count++ == 0) seen.first_s = at;
    seen.last_s = at;
    if (connection_of_this_thread >= 0) seen.connections |= 1u << connection_of_this_thread;
  }

  // A failed answer. For "second", which the loader keeps loading and
  // unloading, NOT_FOUND (unloaded) and UNAVAILABLE naming the transition
  // ("still loading", "draining" while its batcher shuts down) are the
  // documented answers; anything else, and any error for "demo", is lost.
  void Failed(const std::string& model, int code, const std::string& message) {
    if (model == "second" && code == static_cast<int>(absl::StatusCode::kNotFound)) {
      ++counters_.not_found;
      return;
    }
    if (model == "second" && code == static_cast<int>(absl::StatusCode::kUnavailable) &&
        (absl::StrContains(message, "loading") || absl::StrContains(message, "draining"))) {
      ++counters_.unavailable;
      return;
    }
    ++counters_.lost;
    Error(absl::StrCat(model, ": code ", code, ": ", message));
  }

  static v1::DType OutputDtype(uint64_t i) {
    switch (i % 3) {
      case 1: return v1::DTYPE_FP16;
      case 2: return v1::DTYPE_BF16;
      default: return v1::DTYPE_FP32;
    }
  }

  void CheckAnswer(const std::string& model, const v1::InferResponse& response,
                   std::vector<float> x, int64_t rows, v1::DType dtype) {
    auto out = DecodeInferResponse(response);
    if (!out.ok() || out->rows != rows || out->cols != kOut) {
      ++counters_.wrong;
      Error(absl::StrCat(model, ": undecodable or misshapen answer"));
      return;
    }
    oracle_.Check(model, response.version(), std::move(x), std::move(out->values), rows,
                  dtype);
  }

  void Unary(Client* client, uint64_t seed) {
    std::mt19937_64 rng(seed);
    for (uint64_t i = 0; !Done(); ++i) {
      const std::string model = rng() % 10 < 7 ? "demo" : "second";
      const int64_t rows = 1 + static_cast<int64_t>(rng() % 16);
      std::vector<float> x = RandomRows(rows, kIn, seed * 1000003 + i);
      const v1::DType dtype = OutputDtype(rng());
      v1::InferRequest request = *MakeInferRequest(model, x, kIn, 0);
      request.set_output_dtype(dtype);
      ++counters_.unary_requests;
      absl::StatusOr<v1::InferResponse> r = client->Infer(request);
      if (r.ok()) {
        CheckAnswer(model, *r, x, rows, dtype);
      } else {
        Failed(model, static_cast<int>(r.status().code()), std::string(r.status().message()));
      }
    }
  }

  void Streams(Client* client, uint64_t seed) {
    std::mt19937_64 rng(seed);
    constexpr int kPerStream = 64, kWindow = 8;
    for (uint64_t round = 0; !Done(); ++round) {
      std::unique_ptr<InferStream> stream = client->OpenInferStream(absl::Seconds(120));
      struct Sent {
        std::string model;
        std::vector<float> x;
        int64_t rows;
      };
      std::map<std::string, Sent> in_flight;
      int sent = 0;
      bool broken = false;
      auto read_one = [&]() {
        v1::InferStreamResponse answer;
        if (!stream->Read(&answer)) return false;
        auto it = in_flight.find(answer.request_id());
        if (it == in_flight.end()) {
          ++counters_.lost;
          Error("stream answer with an unknown request_id");
          return true;
        }
        if (answer.has_response()) {
          CheckAnswer(it->second.model, answer.response(), std::move(it->second.x),
                      it->second.rows, v1::DTYPE_FP32);
        } else {
          Failed(it->second.model, answer.error().code(), answer.error().message());
        }
        in_flight.erase(it);
        return true;
      };
      while (sent < kPerStream && !Done() && !broken) {
        const std::string model = rng() % 10 < 7 ? "demo" : "second";
        const int64_t rows = 1 + static_cast<int64_t>(rng() % 8);
        const std::string id = absl::StrCat(round, ".", sent);
        std::vector<float> x = RandomRows(rows, kIn, seed * 1000003 + round * 1009 + sent);
        v1::InferRequest request = *MakeInferRequest(model, x, kIn);
        request.set_request_id(id);
        in_flight[id] = {model, std::move(x), rows};
        ++counters_.stream_requests;
        if (!stream->Write(request)) {
          broken = true;
          break;
        }
        ++sent;
        if (in_flight.size() >= kWindow && !read_one()) broken = true;
      }
      stream->WritesDone();
      while (!in_flight.empty() && read_one()) {
      }
      const absl::Status status = stream->Finish();
      if (!in_flight.empty() || !status.ok()) {
        counters_.lost += static_cast<int64_t>(in_flight.size());
        Error(absl::StrCat("stream ended with ", in_flight.size(),
                           " requests unanswered: ", status.ToString()));
      }
    }
  }

  void Loader(Client* admin) {
    std::mt19937_64 rng(77);
    std::vector<uint64_t> loaded;  // versions of "second" believed loaded
    for (uint64_t i = 0; !Done(); ++i) {
      const bool variant_b = i % 2 == 1;
      auto r = admin->LoadModel("second", variant_b ? "second_b.safetensors"
                                                    : "second_a.safetensors");
      if (r.ok()) {
        ++counters_.loads;
        oracle_.Add("second", r->version(), variant_b ? second_b_ : second_a_);
        loaded.push_back(r->version());
      } else {
        ++counters_.admin_errors;
        Error("LoadModel: " + r.status().ToString());
      }
      absl::SleepFor(absl::Milliseconds(150 + rng() % 200));
      if (Done()) break;
      const uint64_t choice = rng() % 4;
      if (choice == 0) {
        // Unload everything: "second" answers NOT_FOUND until the next load.
        auto u = admin->UnloadModel("second");
        if (u.ok()) {
          ++counters_.unloads;
        } else {
          ++counters_.admin_errors;
          Error("UnloadModel(all): " + u.status().ToString());
        }
        loaded.clear();
        absl::SleepFor(absl::Milliseconds(100));
      } else if (choice == 1 && loaded.size() >= 2) {
        // Unload the older of the versions (the registry may have unloaded
        // it already: max_loaded_versions is 2, so NOT_FOUND is fine here).
        auto u = admin->UnloadModel("second", loaded[loaded.size() - 2]);
        if (u.ok()) {
          ++counters_.unloads;
        } else if (u.status().code() != absl::StatusCode::kNotFound) {
          ++counters_.admin_errors;
          Error("UnloadModel(version): " + u.status().ToString());
        }
      }
    }
  }

  void FineTuner(Client* admin) {
    for (uint64_t i = 0; !Done(); ++i) {
      // Targets: the current demo outputs plus a small shift, so the run
      // changes the weights a little and never diverges.
      const std::vector<float> x = RandomRows(64, kIn, 900000 + i);
      std::vector<float> t(static_cast<size_t>(64 * kOut));
      ReferenceForward(*demo_, x.data(), 64, t.data()).IgnoreError();
      for (float& v : t) v += 0.1f;
      std::unique_ptr<FineTuneStream> stream = admin->OpenFineTune(absl::Seconds(120));
      v1::FineTuneRequest request;
      v1::FineTuneConfig* config = request.mutable_config();
      config->set_model("demo");
      config->set_loss("mse");
      config->set_optimizer("sgd");
      config->set_learning_rate(1e-3f);
      config->set_steps(4);
      config->set_batch_size(32);
      *request.mutable_batch()->mutable_inputs() = *MakeTensor(x, kIn);
      *request.mutable_batch()->mutable_targets() = *MakeTensor(t, kOut);
      stream->Write(request);
      stream->WritesDone();
      v1::FineTuneResponse response;
      uint64_t version = 0;
      while (stream->Read(&response)) {
        if (response.has_result()) version = response.result().version();
      }
      const absl::Status status = stream->Finish();
      if (!status.ok() || version == 0) {
        ++counters_.admin_errors;
        Error("FineTune: " + status.ToString());
        absl::SleepFor(absl::Seconds(1));
        continue;
      }
      ++counters_.finetunes;
      // Its exact weights: SaveModel, then read the file back.
      v1::SaveModelRequest save;
      save.set_name("demo");
      save.set_version(version);
      save.set_path("finetuned.safetensors");
      save.set_overwrite(true);
      save.set_include_latents(false);
      auto saved = admin->SaveModel(save);
      absl::StatusOr<Model> weights =
          saved.ok() ? ReadModelFile(repo_ + "/finetuned.safetensors") : saved.status();
      if (!weights.ok()) {
        ++counters_.admin_errors;
        Error("SaveModel/read of a fine-tuned version: " + weights.status().ToString());
      } else {
        oracle_.Add("demo", version, std::make_shared<const Model>(*std::move(weights)));
      }
      absl::SleepFor(absl::Seconds(2));
    }
  }

  const Flags flags_;
  const std::string repo_;
  ServerProcess* const server_;
  Counters counters_;
  Oracle oracle_;
  std::vector<std::unique_ptr<Client>> clients_;
  std::shared_ptr<const Model> demo_, second_a_, second_b_;
  struct ErrorSeen {
    int count = 0;
    double first_s = 0, last_s = 0;
    unsigned connections = 0;  // bit c: seen on clients_[c]
  };

  absl::Time start_;
  absl::Time end_;
  std::atomic<bool> stop_{false};
  absl::Mutex mu_;
  std::map<std::string, ErrorSeen> errors_ ABSL_GUARDED_BY(mu_);
};

int Main(int argc, char** argv) {
  Flags flags;
  if (!ParseFlags(argc, argv, &flags)) return 2;
  ScratchDir dir("bitnet_soak");
  if (dir.path().empty()) {
    std::fprintf(stderr, "bitnet-soak: cannot create a temporary directory\n");
    return 2;
  }
  const std::string repo = dir / "repo";
  std::filesystem::create_directories(repo);
  // "demo" is served from a file (with latents): the fine-tuner needs a
  // version the server can read again; the embedded demo model is not one.
  if (!WriteModelFile(MakeDemoModel(DemoModelSize::kSmall), repo + "/demo.safetensors").ok() ||
      !WriteModelFile(MakeDemoModel(DemoModelSize::kSmall), repo + "/second_a.safetensors")
           .ok() ||
      !WriteModelFile(SecondVariant(), repo + "/second_b.safetensors").ok()) {
    std::fprintf(stderr, "bitnet-soak: cannot write the model files\n");
    return 2;
  }
  std::ofstream(dir / "token") << kToken;
  auto server = ServerProcess::Start(
      flags.server,
      {"--models=demo=demo.safetensors", "--device=cpu", absl::StrCat("--cpu_threads=", flags.cpu_threads),
       "--model_repository=" + repo, "--admin_token_file=" + dir / "token",
       "--max_loaded_versions=2", "--drain_grace_period=30s"},
      dir / "server.log");
  if (!server.ok()) {
    std::fprintf(stderr, "bitnet-soak: %s\n", server.status().ToString().c_str());
    return 1;
  }
  std::printf("bitnet-soak: server pid %d on %s for %s (warm-up %s)\n",
              static_cast<int>((*server)->pid()), (*server)->address().c_str(),
              absl::FormatDuration(flags.duration).c_str(),
              absl::FormatDuration(flags.warmup).c_str());
  std::fflush(stdout);
  Soak soak(flags, repo, server->get());
  return soak.Run();
}

}  // namespace
}  // namespace bitnet

int main(int argc, char** argv) { return bitnet::Main(argc, argv); }

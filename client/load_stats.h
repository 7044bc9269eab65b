// Building blocks of bitnet-load that need no network (unit-tested alone):
// a lock-free latency histogram, sweep specifications and a Prometheus
// text-format reader.
#ifndef BITNET_CLIENT_LOAD_STATS_H_
#define BITNET_CLIENT_LOAD_STATS_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace bitnet {

// Latencies in log-spaced buckets (1% wide, 1 us .. ~1000 s): percentiles are
// within 0.5% of the exact order statistic, memory is fixed (~2000 buckets)
// however many requests a run makes, and Record() is a few relaxed atomic
// adds, so completion callbacks on many gRPC threads never contend on a lock.
// Thread-safe: Record() from any thread; read the results once recording
// has stopped (or accept a slightly torn snapshot, as the progress line does).
class LatencyHistogram {
 public:
  LatencyHistogram();

  // Values below 1 us count as 1 us; above the top bucket, as the top bucket
  // (the maximum is still exact).
  void Record(double seconds);

  uint64_t count() const { return count_.load(std::memory_order_relaxed); }
  double mean_seconds() const;
  double max_seconds() const;
  // q in [0, 1]: the q-quantile (nearest rank) in seconds, at most
  // max_seconds(); 0 when empty.
  double Percentile(double q) const;
  void Reset();

 private:
  static int BucketOf(double seconds);
  static double BucketValue(int bucket);

  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> sum_ns_{0};
  std::atomic<uint64_t> max_ns_{0};
};

// The points of a sweep:
//   "64"            one point
//   "1,4,16"        a list
//   "1:1024:*4"     geometric (also "x4"): 1, 4, 16, ..., 1024
//   "100:1000:100"  arithmetic: 100, 200, ..., 1000
// INVALID_ARGUMENT naming `flag` for anything else, values <= 0 (or < 1
// when `integers`), non-integers when `integers`, or more than 1000 points.
absl::StatusOr<std::vector<double>> ParseSweep(std::string_view spec,
                                               std::string_view flag,
                                               bool integers);

// Sum of the samples of metric `name` (exact name, e.g.
// "bitnet_batch_rows_sum") in Prometheus text format whose labels include
// model="<model>" (any labels when model is empty). NOT_FOUND when no such
// sample exists.
absl::StatusOr<double> PrometheusValue(std::string_view text,
                                       std::string_view name,
                                       std::string_view model);

// Splits "http://host:port/path" into ("host:port" with scheme, "/path").
// INVALID_ARGUMENT unless it starts with http:// (https is not supported:
// /metrics is plain HTTP on the server).
absl::StatusOr<std::pair<std::string, std::string>> SplitHttpUrl(
    std::string_view url);

}  // namespace bitnet

#endif  // BITNET_CLIENT_LOAD_STATS_H_

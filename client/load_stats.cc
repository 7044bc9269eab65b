#include "client/load_stats.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace bitnet {
namespace {

constexpr double kMinSeconds = 1e-6;
constexpr double kGrowth = 1.01;
// 1 us * 1.01^2100 ~= 1.2e3 s.
constexpr int kBuckets = 2100;

}  // namespace

LatencyHistogram::LatencyHistogram()
    : buckets_(new std::atomic<uint64_t>[kBuckets]) {
  Reset();
}

int LatencyHistogram::BucketOf(double seconds) {
  if (!(seconds > kMinSeconds)) return 0;
  const int b = static_cast<int>(std::log(seconds / kMinSeconds) / std::log(kGrowth));
  return std::clamp(b, 0, kBuckets - 1);
}

double LatencyHistogram::BucketValue(int bucket) {
  // Geometric middle of [min * g^b, min * g^(b+1)).
  return kMinSeconds * std::pow(kGrowth, bucket + 0.5);
}

void LatencyHistogram::Record(double seconds) {
  if (!(seconds >= 0)) seconds = 0;
  buckets_[BucketOf(seconds)].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  const uint64_t ns = static_cast<uint64_t>(std::llround(seconds * 1e9));
  sum_ns_.fetch_add(ns, std::memory_order_relaxed);
  uint64_t seen = max_ns_.load(std::memory_order_relaxed);
  while (ns > seen &&
         !max_ns_.compare_exchange_weak(seen, ns, std::memory_order_relaxed)) {
  }
}

double LatencyHistogram::mean_seconds() const {
  const uint64_t n = count();
  return n == 0 ? 0 : static_cast<double>(sum_ns_.load(std::memory_order_relaxed)) / 1e9 / n;
}

double LatencyHistogram::max_seconds() const {
  return static_cast<double>(max_ns_.load(std::memory_order_relaxed)) / 1e9;
}

double LatencyHistogram::Percentile(double q) const {
  uint64_t total = 0;
  for (int b = 0; b < kBuckets; ++b) total += buckets_[b].load(std::memory_order_relaxed);
  if (total == 0) return 0;
  q = std::clamp(q, 0.0, 1.0);
  // Nearest rank: the smallest value with at least ceil(q * n) values <= it.
  const uint64_t rank = std::max<uint64_t>(1, static_cast<uint64_t>(std::ceil(q * total)));
  uint64_t seen = 0;
  for (int b = 0; b < kBuckets; ++b) {
    seen += buckets_[b].load(std::memory_order_relaxed);
    if (seen >= rank) return std::min(BucketValue(b), max_seconds());
  }
  return max_seconds();
}

void LatencyHistogram::Reset() {
  for (int b = 0; b < kBuckets; ++b) buckets_[b].store(0, std::memory_order_relaxed);
  count_.store(0);
  sum_ns_.store(0);
  max_ns_.store(0);
}

absl::StatusOr<std::vector<double>> ParseSweep(std::string_view spec_view,
                                               std::string_view flag_view,
                                               bool integers) {
  const absl::string_view spec = absl::StripAsciiWhitespace(
      absl::string_view(spec_view.data(), spec_view.size()));
  const absl::string_view flag(flag_view.data(), flag_view.size());
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--", flag, "=", spec, ": ", why,
        "; expected N, a list a,b,c, a:b:step (arithmetic) or a:b:*factor "
        "(geometric)"));
  };
  auto number = [&](absl::string_view text, double* out) {
    text = absl::StripAsciiWhitespace(text);
    if (!absl::SimpleAtod(text, out) || !std::isfinite(*out)) return false;
    return true;
  };
  std::vector<double> points;
  if (spec.find(':') != absl::string_view::npos) {
    std::vector<absl::string_view> parts = absl::StrSplit(spec, ':');
    if (parts.size() != 3) return bad("a range has three parts");
    double a, b, step;
    if (!number(parts[0], &a) || !number(parts[1], &b)) return bad("bad range bounds");
    absl::string_view s = absl::StripAsciiWhitespace(parts[2]);
    const bool geometric = absl::ConsumePrefix(&s, "*") || absl::ConsumePrefix(&s, "x");
    if (!number(s, &step)) return bad("bad step");
    if (a > b) return bad("the start is above the end");
    if (geometric ? step <= 1 : step <= 0) {
      return bad(geometric ? "the factor must be > 1" : "the step must be > 0");
    }
    for (double v = a; v <= b * (1 + 1e-9); v = geometric ? v * step : v + step) {
      points.push_back(v);
      if (points.size() > 1000) return bad("more than 1000 points");
    }
  } else {
    for (absl::string_view part : absl::StrSplit(spec, ',')) {
      double v;
      if (!number(part, &v)) return bad(absl::StrCat("\"", part, "\" is not a number"));
      points.push_back(v);
      if (points.size() > 1000) return bad("more than 1000 points");
    }
  }
  for (double v : points) {
    if (!(v > 0) || (integers && (v < 1 || v != std::floor(v)))) {
      return bad(absl::StrCat(v, integers ? " is not a positive integer"
                                          : " is not positive"));
    }
  }
  return points;
}

absl::StatusOr<double> PrometheusValue(std::string_view text_view,
                                       std::string_view name_view,
                                       std::string_view model_view) {
  const absl::string_view text(text_view.data(), text_view.size());
  const absl::string_view name(name_view.data(), name_view.size());
  const absl::string_view model(model_view.data(), model_view.size());
  const std::string want_label = absl::StrCat("model=\"", model, "\"");
  double sum = 0;
  bool found = false;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    if (!absl::ConsumePrefix(&line, name)) continue;
    absl::string_view labels;
    if (!line.empty() && line[0] == '{') {
      const size_t close = line.find('}');
      if (close == absl::string_view::npos) continue;
      labels = line.substr(1, close - 1);
      line.remove_prefix(close + 1);
    }
    if (line.empty() || (line[0] != ' ' && line[0] != '\t')) continue;  // a longer name
    if (!model.empty()) {
      bool match = false;
      for (absl::string_view label : absl::StrSplit(labels, ',')) {
        if (absl::StripAsciiWhitespace(label) == want_label) match = true;
      }
      if (!match) continue;
    }
    // "value [timestamp]"
    std::vector<absl::string_view> fields =
        absl::StrSplit(absl::StripAsciiWhitespace(line), ' ', absl::SkipEmpty());
    double v;
    if (fields.empty() || !absl::SimpleAtod(fields[0], &v)) continue;
    sum += v;
    found = true;
  }
  if (!found) {
    return absl::NotFoundError(absl::StrCat(
        "metric ", name, model.empty() ? "" : absl::StrCat("{", want_label, "}"),
        " not found"));
  }
  return sum;
}

absl::StatusOr<std::pair<std::string, std::string>> SplitHttpUrl(
    std::string_view url_view) {
  absl::string_view url = absl::StripAsciiWhitespace(
      absl::string_view(url_view.data(), url_view.size()));
  absl::string_view rest = url;
  if (!absl::ConsumePrefix(&rest, "http://") || rest.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics URL \"", url, "\": expected http://host:port/path"));
  }
  const size_t slash = rest.find('/');
  const absl::string_view host = rest.substr(0, slash);
  if (host.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics URL \"", url, "\": no host"));
  }
  return std::make_pair(
      absl::StrCat("http://", host),
      slash == absl::string_view::npos ? std::string("/metrics")
                                       : std::string(rest.substr(slash)));
}

}  // namespace bitnet

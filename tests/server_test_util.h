// Helpers shared by the in-process server tests (server_integration_test.cc,
// server_load_test.cc): start an InferenceServer on ephemeral ports, build
// inputs, scrape metric values.
#ifndef BITNET_TESTS_SERVER_TEST_UTIL_H_
#define BITNET_TESTS_SERVER_TEST_UTIL_H_

#include <cstdlib>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "gtest/gtest.h"
#include "server/model/demo_model.h"
#include "server/model/model.h"
#include "server/model/reference_forward.h"
#include "server/service/server.h"

namespace bitnet::testing {

// Loopback, ephemeral gRPC and metrics ports, CPU backend, foreground loads.
inline ServerOptions TestOptions() {
  ServerOptions o;
  o.address = "127.0.0.1";
  o.port = 0;
  o.metrics_address = "127.0.0.1";
  o.metrics_port = 0;
  o.device = "cpu";
  o.cpu_threads = 2;
  o.demo_model = "small";
  o.drain_grace_period = absl::Seconds(5);
  return o;
}

inline std::unique_ptr<Client> MakeClient(int port,
                                          absl::Duration timeout = absl::Seconds(30),
                                          std::string admin_token = "") {
  ClientOptions o;
  o.address = "127.0.0.1:" + std::to_string(port);
  o.timeout = timeout;
  o.admin_token = std::move(admin_token);
  auto client = Client::Create(o);
  EXPECT_TRUE(client.ok()) << client.status();
  return *std::move(client);
}

// A client on a TCP connection of its own (MakeClient's clients share one).
// A multi-device server keeps each connection's requests on one instance
// (connection affinity), so tests that need every instance to compute send
// from several connections.
inline std::unique_ptr<Client> MakeOwnConnectionClient(int port) {
  ClientOptions o;
  o.address = "127.0.0.1:" + std::to_string(port);
  o.timeout = absl::Seconds(30);
  o.own_connection = true;
  auto client = Client::Create(o);
  EXPECT_TRUE(client.ok()) << client.status();
  return *std::move(client);
}

// rows x cols values ~N(0, 1), reproducible from `seed`.
inline std::vector<float> RandomRows(int64_t rows, int64_t cols, uint64_t seed) {
  DemoRandom rng(seed);
  std::vector<float> v(static_cast<size_t>(rows * cols));
  for (float& x : v) x = static_cast<float>(rng.NextNormal());
  return v;
}

inline std::vector<float> Reference(const Model& model, const std::vector<float>& x) {
  const int64_t rows = static_cast<int64_t>(x.size()) / model.input_features();
  std::vector<float> y(static_cast<size_t>(rows * model.output_features()));
  EXPECT_TRUE(ReferenceForward(model, x.data(), rows, y.data()).ok());
  return y;
}

// The value of the sample whose name and labels are exactly `series` (as the
// text format prints them, labels sorted by name), or -1 when absent.
inline double MetricValue(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 &&
        line[series.size()] == ' ') {
      double v = 0;
      if (absl::SimpleAtod(line.substr(series.size() + 1), &v)) return v;
    }
  }
  return -1;
}

// Polls `condition` every millisecond until it holds or `timeout` passes.
inline bool WaitFor(const std::function<bool()>& condition,
                    absl::Duration timeout = absl::Seconds(20)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (condition()) return true;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return condition();
}

}  // namespace bitnet::testing

#endif  // BITNET_TESTS_SERVER_TEST_UTIL_H_

// Dynamic batching under load, end to end: 256 concurrent single-row clients
// against the LARGE demo model (4096 -> 11008 -> 4096) on the CPU backend.
//
// Configuration (documented in docs/api.md, "Batching under load"):
// preferred_batch_rows 128, max_batch_rows 256, max_queue_delay 1 s (longer
// than one batch's compute time on the CPU). A batch is then dispatched only
// when 128 rows are queued: while batch i computes, the clients of batch i
// are blocked and the others' rows pile up in the queue; when it finishes,
// its clients send their next rows and the queue passes 128 again. Only the
// very last batch (fewer than 128 rows left) waits for the delay. Since the
// total is fixed (512 rows), "mean >= 128" means "at most 4 batches".
//
// With the default 2 ms delay the same load gives a mean near (and often
// below) 128: 256 clients keep at most 256 rows in flight, and the
// batcher's two stages (one batch computing, one waiting in the hand-off)
// split them into two batches; a short delay then dispatches partial ones.
//
// The test reads the mean batch size from bitnet_batch_rows (sum / count),
// as a Prometheus query would.
#include <atomic>
#include <cstdio>
#include <latch>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "server/metrics/metrics.h"
#include "server_test_util.h"

namespace bitnet {
namespace {

using ::bitnet::testing::MakeClient;
using ::bitnet::testing::MetricValue;
using ::bitnet::testing::RandomRows;
using ::bitnet::testing::Reference;
using ::bitnet::testing::TestOptions;

TEST(ServerLoadTest, ConcurrentSingleRowClientsFillBatchesOf128) {
  ServerOptions o = TestOptions();
  o.demo_model = "large";
  o.cpu_threads = 0;  // all cores
  o.preferred_batch_rows = 128;
  o.max_batch_rows = 256;
  o.max_request_rows = 256;
  o.max_queue_delay = absl::Seconds(1);
  auto server = InferenceServer::Create(o);
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = MakeClient((*server)->port(), absl::Seconds(600));

  constexpr int kClients = 256;
  constexpr int kRequestsPerClient = 2;
  constexpr int64_t kFeatures = 4096;
  std::atomic<int> failures{0};
  std::vector<std::vector<float>> last_output(kClients);
  // Connect first, and release all clients at once, so that connection
  // set-up and thread start-up are not mistaken for batching behaviour.
  ASSERT_TRUE(client->ListModels().ok());
  std::latch ready(kClients + 1);
  std::vector<std::thread> threads;
  for (int c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] {
      ready.arrive_and_wait();
      for (int r = 0; r < kRequestsPerClient; ++r) {
        auto out = client->Infer("demo", RandomRows(1, kFeatures, 1000 * c + r), kFeatures);
        if (!out.ok()) {
          ++failures;
          ADD_FAILURE() << "client " << c << ": " << out.status();
          return;
        }
        last_output[c] = out->values;
      }
    });
  }
  const absl::Time start = absl::Now();
  ready.arrive_and_wait();
  for (auto& t : threads) t.join();
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  ASSERT_EQ(failures, 0);

  const std::string text = (*server)->metrics().Serialize();
  const double sum = MetricValue(text, "bitnet_batch_rows_sum{model=\"demo\"}");
  const double count = MetricValue(text, "bitnet_batch_rows_count{model=\"demo\"}");
  ASSERT_GT(count, 0);
  EXPECT_EQ(sum, kClients * kRequestsPerClient);
  const double mean = sum / count;
  std::printf("load: %d clients x %d requests, %.0f batches, mean batch rows %.1f, "
              "%.1f s, %.0f rows/s\n",
              kClients, kRequestsPerClient, count, mean, seconds,
              kClients * kRequestsPerClient / seconds);
  for (int le : {32, 64, 128, 256}) {
    std::printf("  batches with <= %d rows: %.0f\n", le,
                MetricValue(text, "bitnet_batch_rows_bucket{model=\"demo\",le=\"" +
                                      std::to_string(le) + "\"}"));
  }
  EXPECT_GE(mean, 128.0);

  // Rows went back to the right clients: spot-check two against the oracle.
  const Model model = MakeDemoModel(DemoModelSize::kLarge);
  for (int c : {0, 201}) {
    EXPECT_EQ(last_output[c],
              Reference(model, RandomRows(1, kFeatures, 1000 * c + kRequestsPerClient - 1)))
        << "client " << c;
  }
}

}  // namespace
}  // namespace bitnet

// Dynamic batching under load, end to end: 256 concurrent single-row clients
// against the LARGE demo model (4096 -> 11008 -> 4096) on the CPU backend.
//
// Configuration (documented in docs/api.md, "Batching"): preferred_batch_rows
// 128, max_batch_rows 256, max_queue_delay 200 ms. A batch of 128 rows takes
// far longer on the CPU than the clients need to send their next rows, so
// while batch i computes and batch i+1 waits in the hand-off slot, the other
// clients' rows pile up in the queue: every batch is dispatched because 128
// rows are queued, not because the delay expired. The test reads the mean
// batch size from bitnet_batch_rows (sum / count) exactly as a Prometheus
// query would.
#include <atomic>
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
  o.max_queue_delay = absl::Milliseconds(200);
  auto server = InferenceServer::Create(o);
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = MakeClient((*server)->port(), absl::Seconds(600));

  constexpr int kClients = 256;
  constexpr int kRequestsPerClient = 2;
  constexpr int64_t kFeatures = 4096;
  std::atomic<int> failures{0};
  std::vector<std::vector<float>> last_output(kClients);
  std::vector<std::thread> threads;
  const absl::Time start = absl::Now();
  for (int c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] {
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

// bitnet-server with --device=all on a host with two or more GPUs: every GPU
// holds the small demo model and computes, answers equal the CPU oracle (int8
// activations: bit-identical), per-instance health and metrics name each GPU.
// Skips itself with fewer than two visible GPUs (CTest label gpu).
#include <httplib.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "server/model/demo_model.h"
#include "server/runtime/backend.h"
#include "server/service/server.h"
#include "tests/server_test_util.h"

namespace bitnet {
namespace {

using ::bitnet::testing::MakeClient;
using ::bitnet::testing::MakeOwnConnectionClient;
using ::bitnet::testing::MetricValue;
using ::bitnet::testing::RandomRows;
using ::bitnet::testing::Reference;
using ::bitnet::testing::TestOptions;

constexpr int64_t kFeatures = 64;  // the small demo model

TEST(MultiDeviceGpuTest, EveryGpuServesAndAnswersLikeTheOracle) {
  absl::StatusOr<int> gpus = VisibleGpuCount();
  ASSERT_TRUE(gpus.ok()) << gpus.status();
  if (*gpus < 2) GTEST_SKIP() << "needs 2 GPUs, " << *gpus << " visible";
  ServerOptions o = TestOptions();
  o.device = "all";
  auto server = InferenceServer::Create(o);
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = MakeClient((*server)->port());
  const Model model = MakeDemoModel(DemoModelSize::kSmall);

  std::vector<std::string> devices;
  for (int i = 0; i < *gpus; ++i) devices.push_back(absl::StrCat("cuda:", i));
  auto described = client->GetModel("demo");
  ASSERT_TRUE(described.ok()) << described.status();
  EXPECT_EQ(described->backend(), absl::StrJoin(devices, ","));
  for (const std::string& d : devices) {
    EXPECT_EQ(*client->Health("demo@" + d), "SERVING") << d;
  }

  // One connection per GPU (connections get instances in turn), sequential
  // requests from each in turn; then concurrent clients, each on its own
  // connection, keep several GPUs busy at once.
  std::vector<std::unique_ptr<Client>> per_gpu;
  for (int g = 0; g < *gpus; ++g) per_gpu.push_back(MakeOwnConnectionClient((*server)->port()));
  for (int i = 0; i < 2 * *gpus; ++i) {
    const std::vector<float> x = RandomRows(1 + i % 4, kFeatures, i);
    auto out = per_gpu[i % *gpus]->Infer("demo", x, kFeatures);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(out->values, Reference(model, x)) << "request " << i;
  }
  std::vector<std::thread> clients;
  std::vector<int> wrong(8, 0);
  for (int t = 0; t < 8; ++t) {
    clients.emplace_back([&, t] {
      auto mine = MakeOwnConnectionClient((*server)->port());
      for (int i = 0; i < 25; ++i) {
        const std::vector<float> x = RandomRows(8, kFeatures, 1000 * t + i);
        auto out = mine->Infer("demo", x, kFeatures);
        if (!out.ok() || out->values != Reference(model, x)) ++wrong[t];
      }
    });
  }
  for (std::thread& c : clients) c.join();
  for (int t = 0; t < 8; ++t) EXPECT_EQ(wrong[t], 0) << "client " << t;

  httplib::Client http("127.0.0.1", (*server)->metrics_port());
  auto response = http.Get("/metrics");
  ASSERT_TRUE(response);
  for (const std::string& d : devices) {
    const std::string labels = absl::StrCat("{device=\"", d, "\",model=\"demo\"}");
    EXPECT_GE(MetricValue(response->body, "bitnet_batch_rows_count" + labels), 2) << d;
    EXPECT_EQ(MetricValue(response->body, "bitnet_instance_healthy" + labels), 1) << d;
    EXPECT_GT(MetricValue(response->body,
                          absl::StrCat("bitnet_device_memory_used_bytes{device=\"", d, "\"}")),
              0)
        << d;
  }
  EXPECT_TRUE((*server)->Drain(absl::Seconds(10)));
}

}  // namespace
}  // namespace bitnet

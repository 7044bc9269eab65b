// Admin.FineTune with device "cuda" through a real gRPC channel: the digits
// model trained by the GPU training backend reaches >= 90% held-out accuracy
// through Infer, and cuBLAS is loaded only by that first GPU fine-tune (not
// at server start). Labelled `gpu`; skips without a device.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bitnet/v1/admin.grpc.pb.h"
#include "bitnet/v1/inference.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "server/model/demo_model.h"
#include "server/model/model.h"
#include "server/model/model_file.h"
#include "server/model/safetensors.h"
#include "server/service/server.h"
#include "server/training/cuda_training_backend.h"

namespace bitnet {
namespace {

constexpr char kToken[] = "finetune-gpu-test-token-0123456789";

bool CublasLoaded() {
  std::ifstream maps("/proc/self/maps");
  std::stringstream text;
  text << maps.rdbuf();
  return text.str().find("libcublas") != std::string::npos;
}

v1::Tensor Fp32Tensor(const float* data, int64_t rows, int64_t cols) {
  v1::Tensor t;
  t.set_dtype(v1::DTYPE_FP32);
  t.add_shape(rows);
  t.add_shape(cols);
  t.set_data(reinterpret_cast<const char*>(data), rows * cols * sizeof(float));
  return t;
}

TEST(FineTuneGpuTest, DigitsOnTheGpuThroughTheAdminApi) {
  // Before anything CUDA is touched: the test binary itself must not have
  // pulled cuBLAS in (it links what bitnet-server links).
  EXPECT_FALSE(CublasLoaded()) << "cuBLAS was loaded at start-up";
  {
    absl::StatusOr<std::unique_ptr<training::TrainingBackend>> probe =
        training::CreateCudaTrainingBackend();
    if (!probe.ok()) GTEST_SKIP() << probe.status();
  }
  const std::filesystem::path repo =
      std::filesystem::temp_directory_path() /
      absl::StrCat("bitnet_finetune_gpu_test_", ::getpid());
  std::filesystem::create_directories(repo);
  DemoRandom rng(20250105);
  Model model;
  for (auto [in, out, act] :
       {std::tuple<int64_t, int64_t, Activation>{64, 256, Activation::kRelu},
        {256, 10, Activation::kIdentity}}) {
    Layer layer;
    layer.spec = {.in_features = in, .out_features = out, .activation = act,
                  .act_quant = ActivationQuant::kInt8, .has_bias = true};
    layer.latent.resize(in * out);
    for (float& v : layer.latent) {
      v = static_cast<float>(rng.NextNormal() / std::sqrt(double(in)));
    }
    layer.weight =
        *QuantizeAndPack(layer.latent, out, in, ScaleGranularity::kPerRow);
    layer.bias.assign(out, 0.0f);
    model.layers.push_back(std::move(layer));
  }
  ASSERT_TRUE(WriteModelFile(model, (repo / "digits.safetensors").string()).ok());

  ServerOptions o;
  o.address = "127.0.0.1";
  o.port = 0;
  o.metrics_port = -1;
  o.device = "cpu";  // serving on the CPU; training on the GPU (asked for)
  o.demo_model = "none";
  o.model_repository = repo.string();
  o.models = {{"digits", "digits.safetensors"}};
  o.admin_token = kToken;
  auto server = InferenceServer::Create(o);
  ASSERT_TRUE(server.ok()) << server.status();
  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", (*server)->port()),
                                     grpc::InsecureChannelCredentials());
  auto admin = v1::Admin::NewStub(channel);
  auto inference = v1::Inference::NewStub(channel);

  auto file = *safetensors::SafetensorsFile::Read(
      std::string(BITNET_TEST_DATA_DIR) + "/digits.safetensors");
  const std::vector<float> train_x =
      *file.Copy<float>(*file.Find("train.x"), safetensors::DType::kF32);
  const std::vector<int32_t> train_y =
      *file.Copy<int32_t>(*file.Find("train.labels"), safetensors::DType::kI32);
  const std::vector<float> test_x =
      *file.Copy<float>(*file.Find("test.x"), safetensors::DType::kF32);
  const std::vector<int32_t> test_y =
      *file.Copy<int32_t>(*file.Find("test.labels"), safetensors::DType::kI32);

  grpc::ClientContext context;
  context.AddMetadata("authorization", absl::StrCat("Bearer ", kToken));
  auto stream = admin->FineTune(&context);
  v1::FineTuneRequest request;
  v1::FineTuneConfig* config = request.mutable_config();
  config->set_model("digits");
  config->set_loss("cross_entropy");
  config->set_learning_rate(3e-3f);
  config->set_epochs(8);
  config->set_device("cuda");
  const int64_t n = static_cast<int64_t>(train_y.size());
  *request.mutable_batch()->mutable_inputs() = Fp32Tensor(train_x.data(), n, 64);
  request.mutable_batch()->mutable_labels()->Add(train_y.begin(), train_y.end());
  ASSERT_TRUE(stream->Write(request));
  stream->WritesDone();
  v1::FineTuneResponse response;
  v1::FineTuneResult result;
  while (stream->Read(&response)) {
    if (response.has_result()) result = response.result();
  }
  grpc::Status status = stream->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(result.device(), "cuda");
  EXPECT_TRUE(CublasLoaded()) << "the GPU fine-tune did not load cuBLAS";

  v1::InferRequest infer;
  infer.set_model("digits");
  *infer.mutable_input() =
      Fp32Tensor(test_x.data(), static_cast<int64_t>(test_y.size()), 64);
  v1::InferResponse answer;
  grpc::ClientContext infer_context;
  ASSERT_TRUE(inference->Infer(&infer_context, infer, &answer).ok());
  EXPECT_EQ(answer.version(), result.version());
  std::vector<float> logits(answer.output().data().size() / 4);
  std::memcpy(logits.data(), answer.output().data().data(), logits.size() * 4);
  int64_t correct = 0;
  for (size_t r = 0; r < test_y.size(); ++r) {
    int64_t best = 0;
    for (int64_t c = 1; c < 10; ++c) {
      if (logits[r * 10 + c] > logits[r * 10 + best]) best = c;
    }
    correct += best == test_y[r];
  }
  const double accuracy = static_cast<double>(correct) / test_y.size();
  std::printf("digits fine-tuned on the GPU through the Admin API: %.1f%% "
              "held-out accuracy, %.2f s training\n",
              100 * accuracy, result.training_seconds());
  EXPECT_GE(accuracy, 0.90);
  server->reset();
  std::filesystem::remove_all(repo);
}

}  // namespace
}  // namespace bitnet

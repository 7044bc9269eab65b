// Admin.FineTune and Admin.SaveModel end to end: an in-process bitnet-server
// (CPU backend, ephemeral port, a temporary model repository) driven over a
// real gRPC channel with the generated stubs, plus unit tests of the
// crash-safe model writer (server/service/finetune_save.h).
//
// What is checked:
//   - digits: a 64 -> 256 -> 10 ternary MLP from random initialisation,
//     fine-tuned through the API on the digits training set, reaches >= 90%
//     held-out accuracy measured through Infer (it starts near 10%);
//   - after FineTune, Infer returns exactly what a local Trainer run on the
//     same batches computes (and a second FineTune continues from the first's
//     latents and optimizer state: still exact);
//   - Infer keeps answering during a fine-tune, every response OK and equal
//     to the old or the new version's output, as its version field says;
//   - failures and cancellation leave the versions unchanged; one fine-tune
//     per model at a time;
//   - SaveModel round trip (latents included), overwrite refusal, path
//     confinement, and a pre-existing file surviving a failed or killed save.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "bitnet/v1/admin.grpc.pb.h"
#include "bitnet/v1/inference.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "server/metrics/metrics.h"
#include "server/model/demo_model.h"
#include "server/model/model.h"
#include "server/model/model_file.h"
#include "server/model/reference_forward.h"
#include "server/model/safetensors.h"
#include "server/registry/model_registry.h"
#include "server/service/finetune_save.h"
#include "server/service/server.h"
#include "server/training/trainer.h"

namespace bitnet {
namespace {

using ::testing::HasSubstr;

constexpr char kToken[] = "finetune-test-token-0123456789";

// ---------------------------------------------------------------- models

Layer RandomLayer(int64_t in, int64_t out, Activation activation,
                  ActivationQuant act_quant, bool latents, DemoRandom& rng) {
  Layer layer;
  layer.spec = {.in_features = in,
                .out_features = out,
                .activation = activation,
                .act_quant = act_quant,
                .has_bias = true};
  std::vector<float> w(in * out);
  const double stddev = 1.0 / std::sqrt(static_cast<double>(in));
  for (float& v : w) v = static_cast<float>(rng.NextNormal() * stddev);
  absl::StatusOr<PackedTernaryMatrix> packed =
      QuantizeAndPack(w, out, in, ScaleGranularity::kPerRow);
  EXPECT_TRUE(packed.ok()) << packed.status();
  layer.weight = *std::move(packed);
  layer.bias.assign(out, 0.0f);
  if (latents) layer.latent = std::move(w);
  return layer;
}

// The digits acceptance model: 64 -> 256 (ReLU) -> 10, int8 activations,
// random latents N(0, 1/fan_in).
Model DigitsModel() {
  DemoRandom rng(20250105);
  Model model;
  model.layers.push_back(RandomLayer(64, 256, Activation::kRelu,
                                     ActivationQuant::kInt8, true, rng));
  model.layers.push_back(RandomLayer(256, 10, Activation::kIdentity,
                                     ActivationQuant::kInt8, true, rng));
  return model;
}

// A small regression model without latents (the trainer derives them).
// int8 activations in both layers: in that mode the served (CPU kernel)
// forward is bit-identical to the oracle and so to the trainer's forward; in
// none mode the CPU kernel sums floats in chunks (kernels/ternary_gemm.h),
// which differs in the last bits.
Model SmallModel() {
  DemoRandom rng(7);
  Model model;
  model.layers.push_back(RandomLayer(16, 24, Activation::kGelu,
                                     ActivationQuant::kInt8, false, rng));
  model.layers.push_back(RandomLayer(24, 8, Activation::kIdentity,
                                     ActivationQuant::kInt8, false, rng));
  return model;
}

struct Split {
  std::vector<float> x;
  std::vector<int32_t> labels;
  int64_t rows = 0;
};

Split LoadDigits(const std::string& name) {
  Split split;
  absl::StatusOr<safetensors::SafetensorsFile> file =
      safetensors::SafetensorsFile::Read(std::string(BITNET_TEST_DATA_DIR) +
                                         "/digits.safetensors");
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return split;
  const safetensors::TensorInfo* x = file->Find(name + ".x");
  const safetensors::TensorInfo* labels = file->Find(name + ".labels");
  EXPECT_NE(x, nullptr);
  EXPECT_NE(labels, nullptr);
  if (x == nullptr || labels == nullptr) return split;
  split.rows = x->shape[0];
  split.x = *file->Copy<float>(*x, safetensors::DType::kF32);
  split.labels = *file->Copy<int32_t>(*labels, safetensors::DType::kI32);
  return split;
}

std::vector<float> RandomRows(int64_t rows, int64_t cols, uint64_t seed) {
  DemoRandom rng(seed);
  std::vector<float> v(rows * cols);
  for (float& x : v) x = static_cast<float>(rng.NextNormal());
  return v;
}

std::vector<float> Reference(const Model& model, const std::vector<float>& x) {
  const int64_t rows = static_cast<int64_t>(x.size()) / model.input_features();
  std::vector<float> y(rows * model.output_features());
  EXPECT_TRUE(ReferenceForward(model, x.data(), rows, y.data()).ok());
  return y;
}

// ---------------------------------------------------------------- wire

v1::Tensor Fp32Tensor(const float* data, int64_t rows, int64_t cols) {
  v1::Tensor t;
  t.set_dtype(v1::DTYPE_FP32);
  t.add_shape(rows);
  t.add_shape(cols);
  t.set_data(reinterpret_cast<const char*>(data), rows * cols * sizeof(float));
  return t;
}

std::vector<float> Fp32Values(const v1::Tensor& t) {
  std::vector<float> v(t.data().size() / sizeof(float));
  std::memcpy(v.data(), t.data().data(), v.size() * sizeof(float));
  return v;
}

struct FineTuneRun {
  grpc::Status status;
  std::vector<v1::FineTuneProgress> progress;
  bool has_result = false;
  v1::FineTuneResult result;
};

// One batch of examples: x [rows, in] plus labels or targets.
struct Examples {
  const float* x = nullptr;
  int64_t rows = 0;
  int64_t in = 0;
  const int32_t* labels = nullptr;
  const float* targets = nullptr;
  int64_t out = 0;
};

class FineTuneTest : public ::testing::Test {
 protected:
  void SetUp() override {
    repo_ = std::filesystem::temp_directory_path() /
            absl::StrCat("bitnet_finetune_test_", ::getpid(), "_",
                         counter_++);
    std::filesystem::create_directories(repo_);
    digits_ = DigitsModel();
    small_ = SmallModel();
    ASSERT_TRUE(WriteModelFile(digits_, Repo("digits.safetensors")).ok());
    ASSERT_TRUE(WriteModelFile(small_, Repo("small.safetensors")).ok());

    ServerOptions o;
    o.address = "127.0.0.1";
    o.port = 0;
    o.metrics_port = -1;
    o.device = "cpu";
    o.cpu_threads = 1;
    o.demo_model = "none";
    o.model_repository = repo_.string();
    o.models = {{"digits", "digits.safetensors"},
                {"small", "small.safetensors"}};
    o.admin_token = kToken;
    o.max_loaded_versions = 3;
    o.drain_grace_period = absl::Seconds(5);
    absl::StatusOr<std::unique_ptr<InferenceServer>> server =
        InferenceServer::Create(o);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                   grpc::InsecureChannelCredentials());
    inference_ = v1::Inference::NewStub(channel_);
    admin_ = v1::Admin::NewStub(channel_);
  }

  void TearDown() override {
    admin_.reset();
    inference_.reset();
    channel_.reset();
    server_.reset();
    std::filesystem::remove_all(repo_);
  }

  std::string Repo(const std::string& name) const {
    return (repo_ / name).string();
  }

  static void AddToken(grpc::ClientContext* context) {
    context->AddMetadata("authorization", absl::StrCat("Bearer ", kToken));
  }

  // Infer on `model` (version 0 = latest). Returns the status; fills
  // `output` and `version`.
  grpc::Status Infer(const std::string& model, const std::vector<float>& x,
                     int64_t in, std::vector<float>* output,
                     uint64_t* version = nullptr, uint64_t pin = 0) {
    v1::InferRequest request;
    request.set_model(model);
    request.set_version(pin);
    *request.mutable_input() =
        Fp32Tensor(x.data(), static_cast<int64_t>(x.size()) / in, in);
    v1::InferResponse response;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(30));
    grpc::Status status = inference_->Infer(&context, request, &response);
    if (status.ok()) {
      *output = Fp32Values(response.output());
      if (version != nullptr) *version = response.version();
    }
    return status;
  }

  uint64_t LatestVersion(const std::string& model) {
    v1::GetModelRequest request;
    request.set_name(model);
    v1::GetModelResponse response;
    grpc::ClientContext context;
    grpc::Status status = inference_->GetModel(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.version();
  }

  double Accuracy(const Split& split, uint64_t* version) {
    std::vector<float> logits;
    grpc::Status status = Infer("digits", split.x, 64, &logits, version);
    EXPECT_TRUE(status.ok()) << status.error_message();
    if (!status.ok()) return 0.0;
    int64_t correct = 0;
    for (int64_t r = 0; r < split.rows; ++r) {
      const float* z = logits.data() + r * 10;
      int64_t best = 0;
      for (int64_t c = 1; c < 10; ++c) {
        if (z[c] > z[best]) best = c;
      }
      correct += best == split.labels[r];
    }
    return static_cast<double>(correct) / static_cast<double>(split.rows);
  }

  // Streams `config` and `batches` (one message each), half-closes, reads
  // every answer. `on_progress` (optional) sees each progress message and
  // may cancel the call.
  FineTuneRun FineTune(
      const v1::FineTuneConfig& config, const std::vector<Examples>& batches,
      const std::function<void(const v1::FineTuneProgress&,
                               grpc::ClientContext*)>& on_progress = {},
      bool with_token = true) {
    FineTuneRun run;
    grpc::ClientContext context;
    if (with_token) AddToken(&context);
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(120));
    auto stream = admin_->FineTune(&context);
    bool first = true;
    for (const Examples& b : batches) {
      v1::FineTuneRequest request;
      if (first) *request.mutable_config() = config;
      first = false;
      v1::TrainingBatch* batch = request.mutable_batch();
      *batch->mutable_inputs() = Fp32Tensor(b.x, b.rows, b.in);
      if (b.labels != nullptr) {
        batch->mutable_labels()->Add(b.labels, b.labels + b.rows);
      }
      if (b.targets != nullptr) {
        *batch->mutable_targets() = Fp32Tensor(b.targets, b.rows, b.out);
      }
      if (!stream->Write(request)) break;
    }
    if (first) {
      v1::FineTuneRequest request;
      *request.mutable_config() = config;
      stream->Write(request);
    }
    stream->WritesDone();
    v1::FineTuneResponse response;
    while (stream->Read(&response)) {
      if (response.has_progress()) {
        run.progress.push_back(response.progress());
        if (on_progress) on_progress(response.progress(), &context);
      } else if (response.has_result()) {
        run.has_result = true;
        run.result = response.result();
      }
    }
    run.status = stream->Finish();
    return run;
  }

  grpc::Status Save(const std::string& model, uint64_t version,
                    const std::string& path, bool overwrite,
                    v1::SaveModelResponse* response,
                    bool include_latents = true) {
    v1::SaveModelRequest request;
    request.set_name(model);
    request.set_version(version);
    request.set_path(path);
    request.set_overwrite(overwrite);
    request.set_include_latents(include_latents);
    grpc::ClientContext context;
    AddToken(&context);
    return admin_->SaveModel(&context, request, response);
  }

  std::string Metrics() { return server_->metrics().Serialize(); }

  static inline int counter_ = 0;
  std::filesystem::path repo_;
  Model digits_;
  Model small_;
  std::unique_ptr<InferenceServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Inference::Stub> inference_;
  std::unique_ptr<v1::Admin::Stub> admin_;
};

// Examples in chunks of `chunk` rows.
std::vector<Examples> Chunks(const Split& split, int64_t chunk) {
  std::vector<Examples> out;
  for (int64_t r = 0; r < split.rows; r += chunk) {
    const int64_t rows = std::min(chunk, split.rows - r);
    out.push_back({.x = split.x.data() + r * 64,
                   .rows = rows,
                   .in = 64,
                   .labels = split.labels.data() + r});
  }
  return out;
}

v1::FineTuneConfig DigitsConfig() {
  v1::FineTuneConfig config;
  config.set_model("digits");
  config.set_loss("cross_entropy");
  config.set_optimizer("adamw");
  config.set_learning_rate(3e-3f);
  config.set_batch_size(32);
  config.set_epochs(8);
  config.set_report_interval(45);
  config.set_seed(1);
  return config;
}

double MetricValue(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.size() > series.size() &&
        line.compare(0, series.size(), series) == 0 &&
        line[series.size()] == ' ') {
      double v = 0;
      if (absl::SimpleAtod(line.substr(series.size() + 1), &v)) return v;
    }
  }
  return -1;
}

// ------------------------------------------------------------------ tests

// (e) The acceptance test: digits through the Admin API on the CPU.
TEST_F(FineTuneTest, DigitsReachNinetyPercentThroughTheAdminApi) {
  const Split train = LoadDigits("train");
  const Split test = LoadDigits("test");
  ASSERT_EQ(train.rows, 1437);
  ASSERT_EQ(test.rows, 360);

  uint64_t before_version = 0;
  const double before = Accuracy(test, &before_version);
  EXPECT_EQ(before_version, 1u);

  const auto start = std::chrono::steady_clock::now();
  FineTuneRun run = FineTune(DigitsConfig(), Chunks(train, 256));
  const double seconds = std::chrono::duration<double>(
                             std::chrono::steady_clock::now() - start)
                             .count();
  ASSERT_TRUE(run.status.ok()) << run.status.error_message();
  ASSERT_TRUE(run.has_result);
  const int64_t steps_per_epoch = (1437 + 31) / 32;
  EXPECT_EQ(run.result.steps(), 8 * steps_per_epoch);
  EXPECT_EQ(run.result.examples(), 1437);
  EXPECT_EQ(run.result.base_version(), 1u);
  EXPECT_EQ(run.result.version(), 2u);
  EXPECT_EQ(run.result.device(), "cpu");
  EXPECT_FALSE(run.result.resumed());
  // Progress every 45 steps, plus the last step.
  ASSERT_EQ(run.progress.size(), 8u);
  EXPECT_EQ(run.progress.back().step(), run.result.steps());
  EXPECT_EQ(run.progress.back().total_steps(), run.result.steps());
  EXPECT_EQ(run.progress.back().epoch(), 7);
  EXPECT_GT(run.progress.front().examples_per_second(), 0.0);
  EXPECT_LT(run.progress.back().loss(), run.progress.front().loss());
  EXPECT_GT(run.progress.back().accuracy(), 0.9);

  uint64_t after_version = 0;
  const double after = Accuracy(test, &after_version);
  EXPECT_EQ(after_version, run.result.version());
  std::printf(
      "digits through Admin.FineTune: held-out accuracy %.1f%% (v%llu) -> "
      "%.1f%% (v%llu); %lld steps, %.2f s (server-side training %.2f s)\n",
      100 * before, static_cast<unsigned long long>(before_version),
      100 * after, static_cast<unsigned long long>(after_version),
      static_cast<long long>(run.result.steps()), seconds,
      run.result.training_seconds());
  EXPECT_LT(before, 0.3);
  EXPECT_GE(after, 0.90);

  // Metrics: one step counted per optimizer step; the loss gauge is set.
  const std::string text = Metrics();
  EXPECT_EQ(MetricValue(text, "bitnet_finetune_steps_total{model=\"digits\"}"),
            static_cast<double>(run.result.steps()));
  const double loss =
      MetricValue(text, "bitnet_finetune_loss{model=\"digits\"}");
  EXPECT_GT(loss, 0.0);
  EXPECT_LT(loss, 1.0);
}

// (a) Infer after FineTune equals a local Trainer's forward on the same
// batches, bit for bit; a second FineTune resumes (latents and optimizer
// moments) and is still exact. Also SaveModel round trip (d).
TEST_F(FineTuneTest, InferEqualsTheTrainersForwardAndASecondRunResumes) {
  // MSE on the small model: targets from a fixed random function.
  const int64_t rows = 40, in = 16, out = 8;
  const std::vector<float> x = RandomRows(rows, in, 11);
  const std::vector<float> targets = RandomRows(rows, out, 12);
  const std::vector<float> probe = RandomRows(9, in, 13);

  v1::FineTuneConfig config;
  config.set_model("small");
  config.set_loss("mse");
  config.set_optimizer("adamw");
  config.set_learning_rate(1e-2f);
  config.set_weight_decay(0.01f);
  config.set_batch_size(16);  // 16, 16, 8 rows per pass
  config.set_steps(5);
  config.set_shuffle(false);
  // Sent as two messages of 25 and 15 rows: the data set is their union.
  std::vector<Examples> batches = {
      {.x = x.data(), .rows = 25, .in = in, .targets = targets.data(), .out = out},
      {.x = x.data() + 25 * in, .rows = 15, .in = in,
       .targets = targets.data() + 25 * out, .out = out}};

  training::TrainerOptions options;
  options.loss = training::LossKind::kMeanSquaredError;
  options.optimizer.kind = training::OptimizerKind::kAdamW;
  options.optimizer.learning_rate = 1e-2f;
  options.optimizer.weight_decay = 0.01f;
  absl::StatusOr<Model> file = ReadModelFile(Repo("small.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  absl::StatusOr<std::unique_ptr<training::Trainer>> trainer =
      training::Trainer::Create(*file, options);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  // The documented schedule without shuffling: passes of 16, 16, 8 rows.
  auto local_steps = [&](int64_t steps) {
    for (int64_t s = 0; s < steps; ++s) {
      const int64_t begin = (s % 3) * 16;
      const int64_t n = std::min<int64_t>(16, rows - begin);
      absl::StatusOr<training::StepResult> r = (*trainer)->Step(
          std::span<const float>(x).subspan(begin * in, n * in), n,
          std::span<const float>(targets).subspan(begin * out, n * out));
      ASSERT_TRUE(r.ok()) << r.status();
    }
  };

  FineTuneRun first = FineTune(config, batches);
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  ASSERT_TRUE(first.has_result);
  EXPECT_EQ(first.result.steps(), 5);
  EXPECT_EQ(first.result.examples(), 40);
  local_steps(5);
  std::vector<float> expected(9 * out), served;
  ASSERT_TRUE((*trainer)->Forward(probe, 9, expected).ok());
  uint64_t version = 0;
  ASSERT_TRUE(Infer("small", probe, in, &served, &version).ok());
  EXPECT_EQ(version, first.result.version());
  EXPECT_EQ(served, expected) << "served output differs from the trainer's";
  // The model changed (the test would be vacuous otherwise).
  EXPECT_NE(served, Reference(small_, probe));

  // Second run from the latest version: resumes with the same settings.
  config.set_steps(4);
  FineTuneRun second = FineTune(config, batches);
  ASSERT_TRUE(second.status.ok()) << second.status.error_message();
  ASSERT_TRUE(second.has_result);
  EXPECT_TRUE(second.result.resumed());
  EXPECT_EQ(second.result.base_version(), first.result.version());
  local_steps(4);
  ASSERT_TRUE((*trainer)->Forward(probe, 9, expected).ok());
  ASSERT_TRUE(Infer("small", probe, in, &served, &version).ok());
  EXPECT_EQ(version, second.result.version());
  EXPECT_EQ(served, expected) << "the second fine-tune did not continue "
                                 "from the first one's state";

  // (d) SaveModel round trip: the file holds the trainer's model, latents
  // included.
  v1::SaveModelResponse saved;
  grpc::Status status = Save("small", 0, "small-tuned.safetensors",
                             /*overwrite=*/false, &saved);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(saved.version(), second.result.version());
  EXPECT_TRUE(saved.has_latents());
  EXPECT_EQ(saved.path(), "small-tuned.safetensors");
  EXPECT_EQ(static_cast<uintmax_t>(saved.bytes()),
            std::filesystem::file_size(Repo("small-tuned.safetensors")));
  absl::StatusOr<Model> reread = ReadModelFile(Repo("small-tuned.safetensors"));
  ASSERT_TRUE(reread.ok()) << reread.status();
  const Model want = (*trainer)->ExportModel();
  ASSERT_EQ(reread->layers.size(), want.layers.size());
  for (size_t l = 0; l < want.layers.size(); ++l) {
    SCOPED_TRACE(absl::StrCat("layer ", l));
    EXPECT_EQ(reread->layers[l].weight.words, want.layers[l].weight.words);
    EXPECT_EQ(reread->layers[l].weight.scales, want.layers[l].weight.scales);
    EXPECT_EQ(reread->layers[l].bias, want.layers[l].bias);
    EXPECT_EQ(reread->layers[l].latent, want.layers[l].latent);
    EXPECT_FALSE(reread->layers[l].latent.empty());
  }
  // Loading the saved file serves the same function.
  v1::LoadModelRequest load;
  load.set_name("small-copy");
  load.set_path("small-tuned.safetensors");
  v1::LoadModelResponse loaded;
  grpc::ClientContext load_context;
  AddToken(&load_context);
  ASSERT_TRUE(admin_->LoadModel(&load_context, load, &loaded).ok());
  std::vector<float> copy_out;
  ASSERT_TRUE(Infer("small-copy", probe, in, &copy_out).ok());
  EXPECT_EQ(copy_out, expected);
  // A fine-tune of the copy starts from the file's latents and steps like
  // the resident trainer would with fresh optimizer state.
  absl::StatusOr<std::unique_ptr<training::Trainer>> from_file =
      training::Trainer::Create(*reread, options);
  ASSERT_TRUE(from_file.ok());
  config.set_model("small-copy");
  config.set_steps(2);
  FineTuneRun third = FineTune(config, batches);
  ASSERT_TRUE(third.status.ok()) << third.status.error_message();
  EXPECT_FALSE(third.result.resumed());
  trainer = std::move(from_file);
  local_steps(2);
  ASSERT_TRUE((*trainer)->Forward(probe, 9, expected).ok());
  ASSERT_TRUE(Infer("small-copy", probe, in, &served).ok());
  EXPECT_EQ(served, expected);

  // Without latents on request; overwrite refused, then allowed.
  status = Save("small", 0, "small-tuned.safetensors", false, &saved, false);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::ALREADY_EXISTS)
      << status.error_message();
  status = Save("small", 0, "small-tuned.safetensors", true, &saved, false);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_FALSE(saved.has_latents());
  reread = ReadModelFile(Repo("small-tuned.safetensors"));
  ASSERT_TRUE(reread.ok());
  EXPECT_TRUE(reread->layers[0].latent.empty());
  EXPECT_EQ(reread->layers[0].weight.words, want.layers[0].weight.words);
}

// (b) Infer never fails during a fine-tune, and each answer is entirely the
// old or entirely the new version's output, as its version field says.
TEST_F(FineTuneTest, InferenceKeepsAnsweringDuringFineTune) {
  const Split train = LoadDigits("train");
  const std::vector<float> probe = RandomRows(6, 64, 21);
  const std::vector<float> old_output = Reference(digits_, probe);

  std::atomic<bool> stop{false};
  std::atomic<int64_t> ok_old{0}, ok_new{0}, failures{0};
  std::vector<std::pair<uint64_t, std::vector<float>>> answers;
  std::mutex answers_mu;
  std::vector<std::thread> hammers;
  for (int t = 0; t < 2; ++t) {
    hammers.emplace_back([&] {
      while (!stop.load()) {
        std::vector<float> y;
        uint64_t version = 0;
        grpc::Status s = Infer("digits", probe, 64, &y, &version);
        if (!s.ok()) {
          ++failures;
          ADD_FAILURE() << "Infer failed during fine-tune: "
                        << s.error_message();
          continue;
        }
        if (version == 1) {
          ++ok_old;
          EXPECT_EQ(y, old_output) << "version 1 answered with other weights";
        } else {
          ++ok_new;
          std::lock_guard<std::mutex> lock(answers_mu);
          if (answers.size() < 10000) answers.emplace_back(version, y);
        }
      }
    });
  }
  v1::FineTuneConfig config = DigitsConfig();
  config.set_epochs(4);
  FineTuneRun run = FineTune(config, Chunks(train, 512));
  // Let the hammers see the new version for a while.
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(300);
  while (ok_new.load() < 20 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  stop.store(true);
  for (std::thread& t : hammers) t.join();
  ASSERT_TRUE(run.status.ok()) << run.status.error_message();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_GT(ok_old.load(), 0) << "no request was answered during training";
  EXPECT_GT(ok_new.load(), 0);

  // Every new-version answer equals the new model's reference output.
  v1::SaveModelResponse saved;
  ASSERT_TRUE(Save("digits", run.result.version(), "digits-v2.safetensors",
                   false, &saved)
                  .ok());
  absl::StatusOr<Model> tuned = ReadModelFile(Repo("digits-v2.safetensors"));
  ASSERT_TRUE(tuned.ok()) << tuned.status();
  const std::vector<float> new_output = Reference(*tuned, probe);
  ASSERT_NE(new_output, old_output);
  for (const auto& [version, y] : answers) {
    EXPECT_EQ(version, run.result.version());
    EXPECT_EQ(y, new_output);
  }
  std::printf("during fine-tune: %lld answers from v1, %lld from v%llu, 0 "
              "failures\n",
              static_cast<long long>(ok_old.load()),
              static_cast<long long>(ok_new.load()),
              static_cast<unsigned long long>(run.result.version()));
}

// (c) Cancellation mid-training: CANCELLED, no new version, and the next
// fine-tune is allowed (the claim was released) and starts fresh.
TEST_F(FineTuneTest, CancellationLeavesTheVersionUnchanged) {
  const Split train = LoadDigits("train");
  v1::FineTuneConfig config = DigitsConfig();
  config.set_epochs(0);
  config.set_steps(1000000);  // far more than the test waits for
  config.set_report_interval(5);
  FineTuneRun run = FineTune(
      config, Chunks(train, 512),
      [](const v1::FineTuneProgress& p, grpc::ClientContext* context) {
        if (p.step() >= 10) context->TryCancel();
      });
  EXPECT_EQ(run.status.error_code(), grpc::StatusCode::CANCELLED)
      << run.status.error_message();
  EXPECT_FALSE(run.has_result);
  EXPECT_GE(run.progress.size(), 2u);
  EXPECT_EQ(LatestVersion("digits"), 1u);
  std::vector<float> y;
  const std::vector<float> probe = RandomRows(3, 64, 5);
  uint64_t version = 0;
  ASSERT_TRUE(Infer("digits", probe, 64, &y, &version).ok());
  EXPECT_EQ(version, 1u);
  EXPECT_EQ(y, Reference(digits_, probe));

  // The model is free again (the server notices the cancel within a step).
  config.set_steps(3);
  FineTuneRun again;
  for (int attempt = 0; attempt < 200; ++attempt) {
    again = FineTune(config, Chunks(train, 512));
    if (again.status.error_code() != grpc::StatusCode::FAILED_PRECONDITION) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(again.status.ok()) << again.status.error_message();
  EXPECT_FALSE(again.result.resumed());
  EXPECT_EQ(again.result.base_version(), 1u);
  EXPECT_EQ(again.result.version(), 2u);
}

// (c) Errors: each leaves the version unchanged and names the field.
TEST_F(FineTuneTest, BadRequestsFailAndChangeNothing) {
  const Split train = LoadDigits("train");
  const std::vector<Examples> data = Chunks(train, 512);
  struct Case {
    std::string name;
    std::function<void(v1::FineTuneConfig&)> edit;
    grpc::StatusCode code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"unknown model", [](auto& c) { c.set_model("nope"); },
       grpc::StatusCode::NOT_FOUND, "nope"},
      {"unknown version", [](auto& c) { c.set_base_version(7); },
       grpc::StatusCode::NOT_FOUND, "7"},
      {"no steps", [](auto& c) { c.set_epochs(0); },
       grpc::StatusCode::INVALID_ARGUMENT, "config.steps"},
      {"both", [](auto& c) { c.set_steps(3); },
       grpc::StatusCode::INVALID_ARGUMENT, "exactly one"},
      {"loss", [](auto& c) { c.set_loss("hinge"); },
       grpc::StatusCode::INVALID_ARGUMENT, "config.loss"},
      {"no loss", [](auto& c) { c.clear_loss(); },
       grpc::StatusCode::INVALID_ARGUMENT, "config.loss"},
      {"optimizer", [](auto& c) { c.set_optimizer("lbfgs"); },
       grpc::StatusCode::INVALID_ARGUMENT, "config.optimizer"},
      {"learning rate", [](auto& c) { c.set_learning_rate(-1.0f); },
       grpc::StatusCode::INVALID_ARGUMENT, "learning_rate"},
      {"momentum", [](auto& c) { c.set_optimizer("sgd"); c.set_momentum(1.5f); },
       grpc::StatusCode::INVALID_ARGUMENT, "momentum"},
      {"batch size", [](auto& c) { c.set_batch_size(-3); },
       grpc::StatusCode::INVALID_ARGUMENT, "config.batch_size"},
      {"device", [](auto& c) { c.set_device("tpu"); },
       grpc::StatusCode::INVALID_ARGUMENT, "config.device"},
      {"mse with labels", [](auto& c) { c.set_loss("mse"); },
       grpc::StatusCode::INVALID_ARGUMENT, "batch 1.labels"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    v1::FineTuneConfig config = DigitsConfig();
    c.edit(config);
    FineTuneRun run = FineTune(config, data);
    EXPECT_EQ(run.status.error_code(), c.code) << run.status.error_message();
    EXPECT_THAT(run.status.error_message(), HasSubstr(c.message));
    EXPECT_FALSE(run.has_result);
  }

  // Bad data: a label out of range in the second batch; wrong input width.
  std::vector<int32_t> bad_labels(train.labels.begin(),
                                  train.labels.begin() + 600);
  bad_labels[550] = 10;
  FineTuneRun run = FineTune(
      DigitsConfig(),
      {{.x = train.x.data(), .rows = 512, .in = 64, .labels = bad_labels.data()},
       {.x = train.x.data() + 512 * 64, .rows = 88, .in = 64,
        .labels = bad_labels.data() + 512}});
  EXPECT_EQ(run.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(run.status.error_message(), HasSubstr("batch 2.labels[38]"));
  run = FineTune(DigitsConfig(), {{.x = train.x.data(), .rows = 8, .in = 32,
                                   .labels = train.labels.data()}});
  EXPECT_EQ(run.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(run.status.error_message(), HasSubstr("batch 1.inputs"));
  // No data at all.
  run = FineTune(DigitsConfig(), {});
  EXPECT_EQ(run.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(run.status.error_message(), HasSubstr("no training examples"));
  // No token.
  run = FineTune(DigitsConfig(), data, {}, /*with_token=*/false);
  EXPECT_EQ(run.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // Training diverges: a huge SGD step overflows the latents.
  v1::FineTuneConfig diverge = DigitsConfig();
  diverge.set_optimizer("sgd");
  diverge.set_learning_rate(1e38f);
  diverge.set_epochs(2);
  run = FineTune(diverge, data);
  EXPECT_NE(run.status.error_code(), grpc::StatusCode::OK);
  EXPECT_THAT(run.status.error_message(), HasSubstr("no new version"));

  EXPECT_EQ(LatestVersion("digits"), 1u);
  // The demo-less server has exactly the two models, one version each.
  EXPECT_EQ(LatestVersion("small"), 1u);
}

// One fine-tune per model at a time; other models are independent.
TEST_F(FineTuneTest, OneFineTunePerModelAtATime) {
  const Split train = LoadDigits("train");
  v1::FineTuneConfig slow = DigitsConfig();
  slow.set_epochs(0);
  slow.set_steps(1000000);
  slow.set_report_interval(1);
  std::atomic<bool> started{false}, release{false};
  FineTuneRun first_run;
  std::thread first([&] {
    first_run = FineTune(
        slow, Chunks(train, 512),
        [&](const v1::FineTuneProgress&, grpc::ClientContext* context) {
          started.store(true);
          if (release.load()) context->TryCancel();
        });
  });
  while (!started.load()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  FineTuneRun second = FineTune(DigitsConfig(), Chunks(train, 512));
  EXPECT_EQ(second.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(second.status.error_message(), HasSubstr("another fine-tune"));
  // A different model trains meanwhile.
  const std::vector<float> x = RandomRows(8, 16, 3), t = RandomRows(8, 8, 4);
  v1::FineTuneConfig small;
  small.set_model("small");
  small.set_loss("mse");
  small.set_steps(2);
  FineTuneRun other = FineTune(
      small, {{.x = x.data(), .rows = 8, .in = 16, .targets = t.data(), .out = 8}});
  EXPECT_TRUE(other.status.ok()) << other.status.error_message();
  EXPECT_EQ(other.result.version(), 2u);
  release.store(true);
  first.join();
  EXPECT_EQ(first_run.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(LatestVersion("digits"), 1u);
}

// SIGTERM while a fine-tune runs: the drain does not wait for the whole
// run; the fine-tune ends with UNAVAILABLE and publishes nothing.
TEST_F(FineTuneTest, DrainStopsARunningFineTune) {
  const Split train = LoadDigits("train");
  v1::FineTuneConfig slow = DigitsConfig();
  slow.set_epochs(0);
  slow.set_steps(1000000);
  slow.set_report_interval(1);
  std::atomic<bool> started{false};
  FineTuneRun run;
  std::thread client([&] {
    run = FineTune(slow, Chunks(train, 512),
                   [&](const v1::FineTuneProgress&, grpc::ClientContext*) {
                     started.store(true);
                   });
  });
  while (!started.load()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  const auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(server_->Drain(absl::Seconds(20)));
  const double seconds = std::chrono::duration<double>(
                             std::chrono::steady_clock::now() - start)
                             .count();
  client.join();
  EXPECT_LT(seconds, 10.0) << "the drain waited for the fine-tune";
  EXPECT_EQ(run.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << run.status.error_message();
  EXPECT_FALSE(run.has_result);
  // The registry is shut down after the drain; the metrics still say which
  // versions were ever loaded.
  const std::string text = Metrics();
  EXPECT_NE(text.find("model=\"digits\",version=\"1\""), std::string::npos);
  EXPECT_EQ(text.find("model=\"digits\",version=\"2\""), std::string::npos);
}

// SaveModel: confinement, errors, and versions without host weights.
TEST_F(FineTuneTest, SaveModelChecksPathsAndVersions) {
  v1::SaveModelResponse r;
  // A loaded file's version is saved from the file (no latents: none there).
  grpc::Status s = Save("small", 0, "copy.safetensors", false, &r);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_FALSE(r.has_latents());
  EXPECT_EQ(r.version(), 1u);
  absl::StatusOr<Model> copy = ReadModelFile(Repo("copy.safetensors"));
  ASSERT_TRUE(copy.ok());
  EXPECT_EQ(copy->layers[1].weight.words, small_.layers[1].weight.words);
  // The digits file has latents and they are kept.
  s = Save("digits", 1, "d.safetensors", false, &r);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(r.has_latents());

  EXPECT_EQ(Save("small", 0, "../out.safetensors", false, &r).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Save("small", 0, "/tmp/out.safetensors", false, &r).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Save("small", 0, "missing/out.safetensors", false, &r).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Save("small", 0, "", false, &r).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Save("small", 9, "x.safetensors", false, &r).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Save("nope", 0, "x.safetensors", false, &r).error_code(),
            grpc::StatusCode::NOT_FOUND);
  // A symlinked directory leading out of the repository.
  const std::filesystem::path outside =
      repo_.string() + "-outside";
  std::filesystem::create_directories(outside);
  std::filesystem::create_directory_symlink(outside, repo_ / "out");
  s = Save("small", 0, "out/x.safetensors", false, &r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED)
      << s.error_message();
  EXPECT_FALSE(std::filesystem::exists(outside / "x.safetensors"));
  std::filesystem::remove_all(outside);

  // A file replaced on disk after loading is not taken for the served
  // version.
  ASSERT_TRUE(WriteModelFile(SmallModel(), Repo("small2.safetensors")).ok());
  v1::LoadModelRequest load;
  load.set_name("small2");
  load.set_path("small2.safetensors");
  v1::LoadModelResponse loaded;
  grpc::ClientContext context;
  AddToken(&context);
  ASSERT_TRUE(admin_->LoadModel(&context, load, &loaded).ok());
  Model other = SmallModel();
  other.layers[0].bias[0] = 5.0f;
  ASSERT_TRUE(WriteModelFile(other, Repo("small2.safetensors")).ok());
  s = Save("small2", 0, "y.safetensors", false, &r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), HasSubstr("no longer holds"));

  // No token.
  v1::SaveModelRequest request;
  request.set_name("small");
  request.set_path("z.safetensors");
  grpc::ClientContext no_token;
  EXPECT_EQ(admin_->SaveModel(&no_token, request, &r).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

// The server never loads cuBLAS for CPU work (it is dlopen'ed by the first
// GPU fine-tune only): libcublasLt's large static TLS must not be in a
// process that did not ask for it. Meaningful in CUDA builds.
TEST_F(FineTuneTest, CublasIsNotLoadedByServingOrCpuFineTuning) {
  const std::vector<float> x = RandomRows(8, 16, 3), t = RandomRows(8, 8, 4);
  v1::FineTuneConfig config;
  config.set_model("small");
  config.set_loss("mse");
  config.set_steps(2);
  FineTuneRun run = FineTune(
      config, {{.x = x.data(), .rows = 8, .in = 16, .targets = t.data(), .out = 8}});
  ASSERT_TRUE(run.status.ok()) << run.status.error_message();
  std::ifstream maps("/proc/self/maps");
  std::stringstream text;
  text << maps.rdbuf();
  ASSERT_FALSE(text.str().empty());
  EXPECT_EQ(text.str().find("libcublas"), std::string::npos)
      << "cuBLAS is mapped into the process";
}

// ------------------------------------------------ the writer, crash safety

class SaveModelFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           absl::StrCat("bitnet_save_test_", ::getpid());
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / "model.safetensors").string();
    ASSERT_TRUE(WriteModelFile(SmallModel(), path_).ok());
    original_ = ReadBytes(path_);
    ASSERT_FALSE(original_.empty());
    replacement_ = DigitsModel();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  static std::string ReadBytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  int FilesInDir() const {
    int n = 0;
    for (const auto& entry : std::filesystem::directory_iterator(dir_)) {
      (void)entry;
      ++n;
    }
    return n;
  }

  std::filesystem::path dir_;
  std::string path_;
  std::string original_;
  Model replacement_;
};

TEST_F(SaveModelFileTest, AFailureAtAnyStageLeavesThePreviousFileIntact) {
  for (const char* stage : {"temp_created", "half_written", "written", "synced"}) {
    SCOPED_TRACE(stage);
    absl::StatusOr<SaveModelFileResult> r = SaveModelFile(
        replacement_, path_, /*overwrite=*/true,
        [&](std::string_view s) {
          return s == stage ? absl::InternalError("injected") : absl::OkStatus();
        });
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInternal);
    EXPECT_EQ(ReadBytes(path_), original_);
    EXPECT_EQ(FilesInDir(), 1) << "the temporary file was left behind";
  }
  // Without injected failures it replaces the file completely.
  absl::StatusOr<SaveModelFileResult> r =
      SaveModelFile(replacement_, path_, true);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(ReadBytes(path_), SerializeModelFile(replacement_));
  EXPECT_EQ(r->bytes, static_cast<int64_t>(std::filesystem::file_size(path_)));
  EXPECT_EQ(FilesInDir(), 1);
}

TEST_F(SaveModelFileTest, AProcessKilledMidSaveLeavesThePreviousFileIntact) {
  for (const char* stage : {"half_written", "synced"}) {
    SCOPED_TRACE(stage);
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      // The child writes the replacement and is killed at `stage`.
      SaveModelFile(replacement_, path_, true, [&](std::string_view s) {
        if (s == stage) ::raise(SIGKILL);
        return absl::OkStatus();
      }).IgnoreError();
      ::_exit(3);  // not reached when the stage is
    }
    int wstatus = 0;
    ASSERT_EQ(::waitpid(child, &wstatus, 0), child);
    ASSERT_TRUE(WIFSIGNALED(wstatus)) << "the child was not killed";
    EXPECT_EQ(WTERMSIG(wstatus), SIGKILL);
    EXPECT_EQ(ReadBytes(path_), original_);
    absl::StatusOr<Model> still = ReadModelFile(path_);
    EXPECT_TRUE(still.ok()) << still.status();
    // The crash left a temporary file (".model.safetensors.tmp-..."), which
    // is never taken for the model.
    int temps = 0;
    for (const auto& entry : std::filesystem::directory_iterator(dir_)) {
      const std::string name = entry.path().filename().string();
      if (name != "model.safetensors") {
        EXPECT_EQ(name.rfind(".model.safetensors.tmp-", 0), 0u) << name;
        std::filesystem::remove(entry.path());
        ++temps;
      }
    }
    EXPECT_EQ(temps, 1);
  }
}

TEST_F(SaveModelFileTest, WithoutOverwriteAnExistingFileIsRefused) {
  absl::StatusOr<SaveModelFileResult> r =
      SaveModelFile(replacement_, path_, /*overwrite=*/false);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(ReadBytes(path_), original_);
  // The file appearing between the check and the link is also refused: the
  // hook creates it after the early check.
  const std::string other = (dir_ / "other.safetensors").string();
  r = SaveModelFile(replacement_, other, false, [&](std::string_view s) {
    if (s == "synced") std::ofstream(other) << "raced";
    return absl::OkStatus();
  });
  EXPECT_EQ(r.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(ReadBytes(other), "raced");
  EXPECT_EQ(FilesInDir(), 2);
  // An invalid model is refused before anything is written.
  Model broken = SmallModel();
  broken.layers[0].bias.pop_back();
  r = SaveModelFile(broken, (dir_ / "b.safetensors").string(), false);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(dir_ / "b.safetensors"));
}

TEST(ResolveModelOutputPathTest, ConfinesToTheRepository) {
  const std::filesystem::path repo =
      std::filesystem::temp_directory_path() /
      absl::StrCat("bitnet_resolve_test_", ::getpid());
  std::filesystem::create_directories(repo / "sub");
  const std::string root = std::filesystem::canonical(repo).string();
  EXPECT_EQ(*ResolveModelOutputPath(repo.string(), "a.safetensors"),
            root + "/a.safetensors");
  EXPECT_EQ(*ResolveModelOutputPath(repo.string(), "sub/a.safetensors"),
            root + "/sub/a.safetensors");
  EXPECT_EQ(ResolveModelOutputPath("", "a").status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ResolveModelOutputPath(repo.string(), "sub/../a").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(ResolveModelOutputPath(repo.string(), "sub").status().code(),
            absl::StatusCode::kInvalidArgument);  // a directory
  EXPECT_EQ(ResolveModelOutputPath(repo.string(), "sub/").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResolveModelOutputPath(repo.string(), ".").status().code(),
            absl::StatusCode::kInvalidArgument);
  std::filesystem::remove_all(repo);
}

}  // namespace
}  // namespace bitnet

// Runtime: backend selection, the CPU backend against the whole-model oracle
// (ReferenceForward), and the CPU backend driven by the dynamic batcher from
// many threads.
#include <atomic>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/ternary_format.h"
#include "server/batching/dynamic_batcher.h"
#include "server/model/demo_model.h"
#include "server/model/model.h"
#include "server/model/reference_forward.h"
#include "server/runtime/backend.h"
#include "server/runtime/cpu_backend.h"

namespace bitnet {
namespace {

using ::testing::HasSubstr;

std::vector<float> RandomInput(uint64_t seed, int64_t rows, int64_t cols) {
  DemoRandom random(seed);
  std::vector<float> x(rows * cols);
  for (float& v : x) v = static_cast<float>(random.NextNormal() * 2.0);
  return x;
}

std::vector<float> Oracle(const Model& model, const std::vector<float>& x,
                          int64_t rows) {
  std::vector<float> y(rows * model.output_features());
  absl::Status s = ReferenceForward(model, x.data(), rows, y.data());
  EXPECT_TRUE(s.ok()) << s;
  return y;
}

// A model built here with odd sizes (not multiples of 16 or 128), three
// layers (both ping-pong buffers), every activation, bias on some layers.
Model MakeOddModel(ActivationQuant act_quant, ScaleGranularity granularity) {
  struct Shape {
    int64_t in, out;
    Activation activation;
    bool bias;
  };
  const std::vector<Shape> shapes = {{37, 150, Activation::kGelu, true},
                                     {150, 19, Activation::kSilu, false},
                                     {19, 5, Activation::kIdentity, true}};
  DemoRandom random(1234);
  Model model;
  for (const Shape& shape : shapes) {
    std::vector<float> w(shape.in * shape.out);
    for (float& v : w) v = static_cast<float>(random.NextNormal());
    absl::StatusOr<PackedTernaryMatrix> packed =
        QuantizeAndPack(w, shape.out, shape.in, granularity);
    EXPECT_TRUE(packed.ok()) << packed.status();
    Layer layer;
    layer.spec.in_features = shape.in;
    layer.spec.out_features = shape.out;
    layer.spec.activation = shape.activation;
    layer.spec.act_quant = act_quant;
    layer.spec.has_bias = shape.bias;
    layer.weight = std::move(*packed);
    if (shape.bias) {
      for (int64_t i = 0; i < shape.out; ++i) {
        layer.bias.push_back(static_cast<float>(random.NextNormal() * 0.1));
      }
    }
    model.layers.push_back(std::move(layer));
  }
  EXPECT_TRUE(ValidateModel(model).ok()) << ValidateModel(model);
  return model;
}

std::unique_ptr<ModelInstance> LoadCpu(const Model& model, int64_t max_rows,
                                       int threads) {
  auto backend = CpuBackend::Create({.num_threads = threads});
  EXPECT_TRUE(backend.ok());
  auto instance = (*backend)->Load(model, max_rows);
  EXPECT_TRUE(instance.ok()) << instance.status();
  return instance.ok() ? std::move(*instance) : nullptr;
}

TEST(CreateBackendTest, CpuAndAuto) {
  auto cpu = CreateBackend("cpu");
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_EQ((*cpu)->device(), "cpu");

  auto automatic = CreateBackend("auto", BackendOptions{.cpu_threads = 2});
  ASSERT_TRUE(automatic.ok()) << automatic.status();
#if defined(BITNET_HAVE_CUDA)
  const std::string device = (*automatic)->device();
  EXPECT_TRUE(device == "cpu" || device.rfind("cuda:", 0) == 0) << device;
#else
  EXPECT_EQ((*automatic)->device(), "cpu");
#endif
}

TEST(CreateBackendTest, CudaWithoutCudaIsUnavailable) {
#if defined(BITNET_HAVE_CUDA)
  GTEST_SKIP() << "this build has the CUDA backend";
#else
  auto gpu = CreateBackend("cuda:0");
  EXPECT_EQ(gpu.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(gpu.status().message(), HasSubstr("no CUDA backend"));
#endif
}

TEST(CreateBackendTest, RejectsUnknownDevices) {
  for (const char* bad : {"", "gpu", "CPU", "cuda", "cuda:", "cuda:x",
                          "cuda:-1", "cuda:1x", "cuda:+1", " cpu"}) {
    auto backend = CreateBackend(bad);
    EXPECT_EQ(backend.status().code(), absl::StatusCode::kInvalidArgument)
        << "device \"" << bad << "\"";
    EXPECT_THAT(backend.status().message(), HasSubstr("cuda:N")) << bad;
  }
}

// int8 activations: integer accumulation, same epilogue: bit-identical.
TEST(CpuBackendTest, SmallDemoModelEqualsReferenceExactly) {
  const Model model = MakeDemoModel(DemoModelSize::kSmall);
  ASSERT_EQ(model.layers.front().spec.act_quant, ActivationQuant::kInt8);
  for (int threads : {1, 3}) {
    std::unique_ptr<ModelInstance> instance = LoadCpu(model, 256, threads);
    ASSERT_NE(instance, nullptr);
    EXPECT_EQ(instance->max_rows(), 256);
    EXPECT_EQ(instance->device(), "cpu");
    for (int64_t rows : {1, 7, 128, 256}) {
      const std::vector<float> x =
          RandomInput(100 + rows, rows, model.input_features());
      std::vector<float> y(rows * model.output_features(), -1.0f);
      ASSERT_TRUE(instance->Forward(x.data(), rows, y.data()).ok());
      EXPECT_EQ(y, Oracle(model, x, rows))
          << "rows=" << rows << " threads=" << threads;
    }
  }
}

TEST(CpuBackendTest, OddShapesInt8EqualReferenceExactly) {
  for (ScaleGranularity g :
       {ScaleGranularity::kPerRow, ScaleGranularity::kPerTensor}) {
    const Model model = MakeOddModel(ActivationQuant::kInt8, g);
    std::unique_ptr<ModelInstance> instance = LoadCpu(model, 33, 2);
    ASSERT_NE(instance, nullptr);
    for (int64_t rows : {1, 5, 33}) {
      const std::vector<float> x = RandomInput(rows, rows, 37);
      std::vector<float> y(rows * 5);
      ASSERT_TRUE(instance->Forward(x.data(), rows, y.data()).ok());
      EXPECT_EQ(y, Oracle(model, x, rows)) << "rows=" << rows;
    }
  }
}

// fp32 activations: the fast path accumulates in float chunks, the oracle in
// double; CpuTernaryGemm documents 1e-5 relative to the dot product's
// magnitude per layer. Three layers of GELU/SiLU stay well inside 1e-4.
TEST(CpuBackendTest, OddShapesFloatModeCloseToReference) {
  const Model model =
      MakeOddModel(ActivationQuant::kNone, ScaleGranularity::kPerRow);
  std::unique_ptr<ModelInstance> instance = LoadCpu(model, 64, 2);
  ASSERT_NE(instance, nullptr);
  const int64_t rows = 64;
  const std::vector<float> x = RandomInput(7, rows, 37);
  std::vector<float> y(rows * 5);
  ASSERT_TRUE(instance->Forward(x.data(), rows, y.data()).ok());
  const std::vector<float> expected = Oracle(model, x, rows);
  for (size_t i = 0; i < y.size(); ++i) {
    EXPECT_NEAR(y[i], expected[i], 1e-4 * (1.0 + std::fabs(expected[i])))
        << "element " << i;
  }
}

// The instance reuses its buffers: a second, different batch must not see
// anything of the first.
TEST(CpuBackendTest, RepeatedForwardsAreIndependent) {
  const Model model = MakeDemoModel(DemoModelSize::kSmall);
  std::unique_ptr<ModelInstance> instance = LoadCpu(model, 64, 2);
  ASSERT_NE(instance, nullptr);
  const std::vector<float> a = RandomInput(1, 64, 64);
  const std::vector<float> b = RandomInput(2, 3, 64);
  std::vector<float> ya(64 * 32), yb(3 * 32);
  ASSERT_TRUE(instance->Forward(a.data(), 64, ya.data()).ok());
  ASSERT_TRUE(instance->Forward(b.data(), 3, yb.data()).ok());
  EXPECT_EQ(yb, Oracle(model, b, 3));
  ASSERT_TRUE(instance->Forward(a.data(), 64, ya.data()).ok());
  EXPECT_EQ(ya, Oracle(model, a, 64));
}

TEST(CpuBackendTest, ForwardRejectsBadRows) {
  const Model model = MakeDemoModel(DemoModelSize::kSmall);
  std::unique_ptr<ModelInstance> instance = LoadCpu(model, 8, 1);
  ASSERT_NE(instance, nullptr);
  std::vector<float> x(9 * 64), y(9 * 32);
  absl::Status s = instance->Forward(x.data(), 9, y.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("max_rows = 8"));
  EXPECT_EQ(instance->Forward(x.data(), -1, y.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(instance->Forward(nullptr, 0, nullptr).ok());
  EXPECT_EQ(instance->Forward(nullptr, 1, y.data()).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CpuBackendTest, LoadRejectsInvalidModelsAndSizes) {
  auto backend = CpuBackend::Create();
  ASSERT_TRUE(backend.ok());
  Model model = MakeDemoModel(DemoModelSize::kSmall);
  EXPECT_THAT((*backend)->Load(model, 0).status().message(),
              HasSubstr("max_rows"));

  Model broken = model;
  broken.layers[1].weight.words.pop_back();  // truncated tensor
  absl::StatusOr<std::unique_ptr<ModelInstance>> loaded =
      (*backend)->Load(broken, 16);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(loaded.status().message(), HasSubstr("1")) << "names the layer";

  Model unchained = model;
  unchained.layers[1].spec.in_features = 64;
  EXPECT_EQ((*backend)->Load(unchained, 16).status().code(),
            absl::StatusCode::kInvalidArgument);

  EXPECT_EQ((*backend)->Load(Model(), 16).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Many client threads with distinct rows through one batcher whose run
// callback is the CPU backend: every response equals ReferenceForward of the
TEST(CpuBackendTest, ForwardRowsConvertsHalfRowsAroundFp32) {
  const Model model = MakeDemoModel(DemoModelSize::kSmall);
  std::unique_ptr<ModelInstance> instance = LoadCpu(model, 64, 1);
  ASSERT_NE(instance, nullptr);
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateBackend("cpu");
  ASSERT_TRUE(backend.ok());
  EXPECT_FALSE((*backend)->native_half_rows());
  EXPECT_FALSE((*backend)->AllocateHostBuffer(64).pinned());
  const int64_t rows = 9;
  const int64_t in = model.input_features();
  const int64_t out = model.output_features();
  for (ElementType type : {ElementType::kF16, ElementType::kBF16}) {
    std::vector<float> x = RandomInput(77, rows, in);
    std::vector<uint16_t> x_half(x.size());
    ConvertElements(x.data(), ElementType::kF32, x_half.data(), type, rows * in);
    ConvertElements(x_half.data(), type, x.data(), ElementType::kF32, rows * in);
    std::vector<float> want_f32(rows * out);
    ASSERT_TRUE(instance->Forward(x.data(), rows, want_f32.data()).ok());
    std::vector<uint16_t> want(rows * out);
    ConvertElements(want_f32.data(), ElementType::kF32, want.data(), type, rows * out);

    std::vector<uint16_t> got(rows * out);
    ForwardArgs args;
    args.rows = rows;
    args.input_features = in;
    args.output_features = out;
    args.input = x_half.data();
    args.input_dtype = type;
    args.output = got.data();
    args.output_dtype = type;
    ASSERT_TRUE(instance->ForwardRows(args).ok());
    EXPECT_EQ(got, want) << ElementTypeName(type);
    // fp16 in, fp32 out.
    std::vector<float> got_f32(rows * out);
    args.output = got_f32.data();
    args.output_dtype = ElementType::kF32;
    ASSERT_TRUE(instance->ForwardRows(args).ok());
    EXPECT_EQ(got_f32, want_f32);
  }
}

// request's own rows.
TEST(CpuBackendTest, BatcherFromManyThreadsReturnsEachRequestItsOwnRows) {
  const Model model = MakeDemoModel(DemoModelSize::kSmall);
  std::unique_ptr<ModelInstance> instance = LoadCpu(model, 64, 2);
  ASSERT_NE(instance, nullptr);
  const int64_t in = model.input_features();
  const int64_t out = model.output_features();

  std::atomic<int> batches{0};
  RunBatchFn run = [&](const Batch& batch) -> absl::StatusOr<BatchResult> {
    batches.fetch_add(1);
    BatchResult result;
    result.model_version = 1;
    ForwardArgs args;
    args.rows = batch.rows;
    args.input_features = in;
    args.output_features = out;
    args.input = batch.input.data();
    args.input_dtype = batch.input_dtype;
    args.output = batch.output.data();
    args.output_dtype = batch.output_dtype;
    absl::Status s = instance->ForwardRows(args);
    if (!s.ok()) return s;
    result.output_dtype = batch.output_dtype;
    return result;
  };
  BatcherOptions options;
  options.input_features = in;
  options.output_features = out;
  options.preferred_batch_rows = 32;
  options.max_batch_rows = 64;
  options.max_queue_rows = 1 << 20;
  options.max_queue_delay = absl::Microseconds(300);
  auto batcher = DynamicBatcher::Create(options, run);
  ASSERT_TRUE(batcher.ok()) << batcher.status();

  constexpr int kThreads = 8;
  constexpr int kPerThread = 40;
  absl::Mutex mu;
  std::map<int, RequestResult> results;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const int id = t * kPerThread + i;
        BatchRequest r;
        r.rows = 1 + id % 7;
        r.input = RandomInput(5000 + id, r.rows, in);
        r.on_done = [&mu, &results, id](RequestResult result) {
          absl::MutexLock lock(&mu);
          results[id] = std::move(result);
        };
        ASSERT_TRUE((*batcher)->Enqueue(std::move(r)).ok());
      }
    });
  }
  for (std::thread& t : threads) t.join();
  (*batcher)->Shutdown();

  absl::MutexLock lock(&mu);
  ASSERT_EQ(results.size(), static_cast<size_t>(kThreads * kPerThread));
  for (const auto& [id, result] : results) {
    const int64_t rows = 1 + id % 7;
    ASSERT_TRUE(result.status.ok()) << result.status;
    EXPECT_EQ(result.model_version, 1);
    ASSERT_EQ(result.output.ToFloats(),
              Oracle(model, RandomInput(5000 + id, rows, in), rows))
        << "request " << id;
  }
  // Batching happened (fewer batches than requests).
  EXPECT_LT(batches.load(), kThreads * kPerThread);
}

}  // namespace
}  // namespace bitnet

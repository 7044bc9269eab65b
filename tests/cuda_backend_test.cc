// CUDA backend (server/runtime/cuda_backend.h) against the whole-model CPU
// oracle ReferenceForward on the small and large demo models. GPU tests skip
// without a device.
#include "server/runtime/cuda_backend.h"

#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/cuda/ternary_cuda.h"
#include "server/model/demo_model.h"
#include "server/model/model.h"
#include "server/model/reference_forward.h"
#include "server/runtime/backend.h"

namespace bitnet {
namespace {

bool HasGpu() {
  absl::StatusOr<int> n = CudaDeviceCount();
  return n.ok() && *n > 0;
}

std::vector<float> RandomInput(int64_t rows, int64_t cols) {
  std::random_device rd;
  const uint64_t seed = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(rows * cols));
  for (float& v : x) v = normal(rng);
  return x;
}

// Forward on the GPU and on the CPU oracle; int8 demo models with ReLU must
// agree to float rounding of the epilogue (the accumulators are identical).
void CompareWithReference(const Model& model, int64_t max_rows, const std::vector<int64_t>& rows_list) {
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateCudaBackend(0);
  ASSERT_TRUE(backend.ok()) << backend.status();
  absl::StatusOr<std::unique_ptr<ModelInstance>> inst = (*backend)->Load(model, max_rows);
  ASSERT_TRUE(inst.ok()) << inst.status();
  EXPECT_EQ((*inst)->device(), "cuda:0");
  EXPECT_EQ((*inst)->max_rows(), max_rows);
  EXPECT_GT((*inst)->device_memory_bytes(), model.PackedBytes());
  for (int64_t rows : rows_list) {
    SCOPED_TRACE("rows=" + std::to_string(rows));
    const std::vector<float> x = RandomInput(rows, model.input_features());
    std::vector<float> want(static_cast<size_t>(rows * model.output_features()));
    ASSERT_TRUE(ReferenceForward(model, x.data(), rows, want.data()).ok());
    std::vector<float> got(want.size(), std::nanf(""));
    const absl::Status s = (*inst)->Forward(x.data(), rows, got.data());
    ASSERT_TRUE(s.ok()) << s;
    int64_t bad = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      const float tol = 1e-5f * std::fabs(want[i]) + 1e-6f;
      if (!(std::fabs(got[i] - want[i]) <= tol)) {
        if (bad++ == 0) {
          ADD_FAILURE() << "first mismatch at " << i << ": got " << got[i] << " want " << want[i];
        }
      }
    }
    EXPECT_EQ(bad, 0);
  }
}

TEST(CudaBackendTest, SmallDemoModelMatchesReferenceForward) {
  if (!HasGpu()) GTEST_SKIP() << "no CUDA device";
  CompareWithReference(MakeDemoModel(DemoModelSize::kSmall), 300, {1, 7, 64, 300});
}

TEST(CudaBackendTest, LargeDemoModelMatchesReferenceForward) {
  if (!HasGpu()) GTEST_SKIP() << "no CUDA device";
  // ReferenceForward is plain loops: keep the CPU side to a few rows.
  CompareWithReference(MakeDemoModel(DemoModelSize::kLarge), 256, {1, 5});
}

TEST(CudaBackendTest, ErrorsAreClear) {
  if (!HasGpu()) {
    // Without a GPU the backend is UNAVAILABLE (the factory's "auto" falls
    // back to the CPU on exactly this code).
    EXPECT_EQ(CreateCudaBackend(0).status().code(), absl::StatusCode::kUnavailable);
    return;
  }
  EXPECT_EQ(CreateCudaBackend(1000).status().code(), absl::StatusCode::kUnavailable);
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateCudaBackend(0);
  ASSERT_TRUE(backend.ok()) << backend.status();
  const Model model = MakeDemoModel(DemoModelSize::kSmall);
  EXPECT_EQ((*backend)->Load(model, 0).status().code(), absl::StatusCode::kInvalidArgument);
  Model broken = model;
  broken.layers[0].bias.pop_back();
  EXPECT_EQ((*backend)->Load(broken, 8).status().code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<std::unique_ptr<ModelInstance>> inst = (*backend)->Load(model, 8);
  ASSERT_TRUE(inst.ok()) << inst.status();
  std::vector<float> x(9 * model.input_features(), 0.5f);
  std::vector<float> y(9 * model.output_features());
  EXPECT_EQ((*inst)->Forward(x.data(), 9, y.data()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*inst)->Forward(nullptr, 1, y.data()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE((*inst)->Forward(x.data(), 0, y.data()).ok());
}

TEST(CudaBackendTest, NoDeviceMeansUnavailableNotCrash) {
  // Runs everywhere: on a CPU-only machine this is the path CI takes.
  absl::StatusOr<int> n = CudaDeviceCount();
  ASSERT_TRUE(n.ok()) << n.status();
  if (*n == 0) {
    EXPECT_EQ(CreateBackend("cuda:0").status().code(), absl::StatusCode::kUnavailable);
  } else {
    absl::StatusOr<std::unique_ptr<Backend>> b = CreateBackend("cuda:0");
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ((*b)->device(), "cuda:0");
  }
}

}  // namespace
}  // namespace bitnet

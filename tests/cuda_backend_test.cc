// CUDA backend (server/runtime/cuda_backend.h) against the whole-model CPU
// oracle ReferenceForward on the small and large demo models. GPU tests skip
// without a device.
#include "server/runtime/cuda_backend.h"

#include <cmath>
#include <cstdint>
#include <cstring>
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
#include "server/host/element_type.h"
#include "server/host/host_buffer.h"

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

// The batcher's path: fp16/bf16 rows in the backend's pinned buffers. An
// int8 model widens fp16/bf16 input exactly and rounds the fp32 result to
// nearest even, so the answer must be bit for bit the fp32 Forward of the
// widened rows, rounded on the host. Pinned or not must not matter.
TEST(CudaBackendTest, HalfRowsInPinnedBuffersEqualFp32ForwardRounded) {
  if (!HasGpu()) GTEST_SKIP() << "no CUDA device";
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateCudaBackend(0);
  ASSERT_TRUE(backend.ok()) << backend.status();
  EXPECT_TRUE((*backend)->native_half_rows());
  for (DemoModelSize size : {DemoModelSize::kSmall, DemoModelSize::kLarge}) {
    const Model model = MakeDemoModel(size);
    const int64_t in_f = model.input_features();
    const int64_t out_f = model.output_features();
    absl::StatusOr<std::unique_ptr<ModelInstance>> inst = (*backend)->Load(model, 512);
    ASSERT_TRUE(inst.ok()) << inst.status();
    HostBuffer in_buf = (*backend)->AllocateHostBuffer(512 * in_f * 4);
    HostBuffer out_buf = (*backend)->AllocateHostBuffer(512 * out_f * 4);
    EXPECT_TRUE(in_buf.pinned());
    EXPECT_TRUE(out_buf.pinned());
    for (ElementType type : {ElementType::kF16, ElementType::kBF16}) {
      for (int64_t rows : {1, 33, 512}) {
        SCOPED_TRACE(std::string(ElementTypeName(type)) + " rows=" + std::to_string(rows));
        const int64_t n_in = rows * in_f;
        const int64_t n_out = rows * out_f;
        // Rows rounded to `type`, and the same values as fp32.
        std::vector<float> x = RandomInput(rows, in_f);
        std::vector<uint16_t> x_half(n_in);
        ConvertElements(x.data(), ElementType::kF32, x_half.data(), type, n_in);
        ConvertElements(x_half.data(), type, x.data(), ElementType::kF32, n_in);
        std::vector<float> want_f32(n_out);
        ASSERT_TRUE((*inst)->Forward(x.data(), rows, want_f32.data()).ok());
        std::vector<uint16_t> want(n_out);
        ConvertElements(want_f32.data(), ElementType::kF32, want.data(), type, n_out);

        for (bool pinned : {true, false}) {
          std::vector<uint16_t> plain_in = x_half, plain_out(n_out, 0xffff);
          if (pinned) {
            std::memcpy(in_buf.data(), x_half.data(), n_in * 2);
            std::memset(out_buf.data(), 0xff, n_out * 2);
          }
          ForwardArgs args;
          args.rows = rows;
          args.input_features = in_f;
          args.output_features = out_f;
          args.input = pinned ? in_buf.data() : plain_in.data();
          args.input_dtype = type;
          args.input_pinned = pinned;
          args.output = pinned ? out_buf.data() : plain_out.data();
          args.output_dtype = type;
          args.output_pinned = pinned;
          const absl::Status s = (*inst)->ForwardRows(args);
          ASSERT_TRUE(s.ok()) << s;
          const auto* got = static_cast<const uint16_t*>(args.output);
          int64_t bad = 0;
          for (int64_t i = 0; i < n_out; ++i) {
            if (got[i] != want[i] && bad++ == 0) {
              ADD_FAILURE() << "pinned=" << pinned << " first mismatch at " << i << ": 0x"
                            << std::hex << got[i] << " want 0x" << want[i];
            }
          }
          EXPECT_EQ(bad, 0);
        }
      }
    }
  }
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

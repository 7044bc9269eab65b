#include "server/training/training_backend.h"

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "kernels/activation.h"
#include "kernels/ternary_format.h"
#include "kernels/ternary_gemm.h"

namespace bitnet::training {
namespace {

// Below this many multiply-adds a thread costs more than it saves.
constexpr int64_t kMinWorkPerThread = int64_t{1} << 20;

// Runs fn(begin, end) over [0, count) split into at most `threads` contiguous
// blocks, the first on the calling thread.
void ParallelFor(int64_t count, int threads,
                 const std::function<void(int64_t, int64_t)>& fn) {
  threads = static_cast<int>(std::clamp<int64_t>(threads, 1, count));
  if (threads <= 1) {
    if (count > 0) fn(0, count);
    return;
  }
  const int64_t block = (count + threads - 1) / threads;
  std::vector<std::thread> workers;
  for (int t = 1; t < threads; ++t) {
    const int64_t begin = t * block;
    const int64_t end = std::min(count, begin + block);
    if (begin < end) workers.emplace_back(fn, begin, end);
  }
  fn(0, std::min(count, block));
  for (std::thread& w : workers) w.join();
}

class CpuTrainingBackend final : public TrainingBackend {
 public:
  explicit CpuTrainingBackend(int num_threads) : num_threads_(num_threads) {}

  std::string_view name() const override { return "cpu"; }

  absl::Status Gemm(const GemmArgs& args) override;
  absl::Status TernaryForward(const TernaryGemmArgs& args) override;

 private:
  int ThreadsFor(int64_t work) const {
    const int64_t by_work = std::max<int64_t>(1, work / kMinWorkPerThread);
    return static_cast<int>(std::min<int64_t>(num_threads_, by_work));
  }

  int num_threads_;
};

absl::Status CpuTrainingBackend::Gemm(const GemmArgs& args) {
  if (absl::Status s = CheckGemmArgs(args); !s.ok()) return s;
  const int64_t m = args.m, n = args.n, k = args.k;
  if (m == 0 || n == 0) return absl::OkStatus();

  // op(B) as a contiguous [k, n] block so the inner loop is a unit-stride
  // axpy over a row of C (vectorizes without reassociating a sum).
  std::vector<float> b_packed;
  const float* b = args.b;
  int64_t ldb = args.ldb;
  if (args.transpose_b && k > 0) {
    b_packed.resize(k * n);
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t p = 0; p < k; ++p)
        b_packed[p * n + j] = args.b[j * args.ldb + p];
    }
    b = b_packed.data();
    ldb = n;
  }

  auto rows = [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* c = args.c + i * args.ldc;
      if (args.beta == 0.0f) {
        std::fill(c, c + n, 0.0f);
      } else if (args.beta != 1.0f) {
        for (int64_t j = 0; j < n; ++j) c[j] *= args.beta;
      }
      if (args.alpha == 0.0f) continue;
      for (int64_t p = 0; p < k; ++p) {
        const float a_ip = args.transpose_a ? args.a[p * args.lda + i]
                                            : args.a[i * args.lda + p];
        // Skipping exact zeros is what reference BLAS does; ReLU makes many.
        if (a_ip == 0.0f) continue;
        const float a = args.alpha * a_ip;
        const float* b_row = b + p * ldb;
        for (int64_t j = 0; j < n; ++j) c[j] += a * b_row[j];
      }
    }
  };
  ParallelFor(m, ThreadsFor(m * n * std::max<int64_t>(k, 1)), rows);
  return absl::OkStatus();
}

absl::Status CpuTrainingBackend::TernaryForward(const TernaryGemmArgs& args) {
  if (absl::Status s = CheckTernaryGemmArgs(args); !s.ok()) return s;
  const int64_t m = args.m;
  const int64_t n = args.weight.rows;
  const int64_t k = args.weight.cols;
  if (m == 0) return absl::OkStatus();

  // q transposed to [k, n]: the loops below walk k in order (the oracle's
  // summation order, which matters for the double sum of the none mode) and
  // vectorize across the n independent outputs instead.
  std::vector<int8_t> q_t(k * n);
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t c = 0; c < k; ++c) {
      q_t[c * n + j] = static_cast<int8_t>(CodeAt(args.weight, j, c) - 1);
    }
  }

  if (args.act_quant == ActivationQuant::kInt8) {
    auto rows = [&](int64_t begin, int64_t end) {
      std::vector<int8_t> xq(k);
      std::vector<int32_t> acc(n);
      for (int64_t i = begin; i < end; ++i) {
        float row_scale = 0.0f;
        QuantizeRowsInt8(args.x + i * k, 1, k, xq.data(), &row_scale);
        std::fill(acc.begin(), acc.end(), 0);
        for (int64_t c = 0; c < k; ++c) {
          const int32_t xc = xq[c];
          const int8_t* q_row = q_t.data() + c * n;
          for (int64_t j = 0; j < n; ++j)
            acc[j] += xc * static_cast<int32_t>(q_row[j]);
        }
        float* y = args.y + i * n;
        for (int64_t j = 0; j < n; ++j) {
          const float bias = args.bias != nullptr ? args.bias[j] : 0.0f;
          y[j] =
              ApplyActivation(args.activation,
                              Int8Dequantize(acc[j], args.weight.ScaleForRow(j),
                                             row_scale, bias));
        }
      }
    };
    ParallelFor(m, ThreadsFor(m * n * k), rows);
    return absl::OkStatus();
  }

  auto rows = [&](int64_t begin, int64_t end) {
    std::vector<double> acc(n);
    for (int64_t i = begin; i < end; ++i) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t c = 0; c < k; ++c) {
        // The same double operations as ReferenceTernaryGemm, in the same
        // order per output: acc += double(x) * double(q). (The project builds
        // with -std=c++20, i.e. -ffp-contract=off: no fused multiply-adds.)
        const double xc = static_cast<double>(args.x[i * k + c]);
        const int8_t* q_row = q_t.data() + c * n;
        for (int64_t j = 0; j < n; ++j)
          acc[j] += xc * static_cast<double>(q_row[j]);
      }
      float* y = args.y + i * n;
      for (int64_t j = 0; j < n; ++j) {
        const double bias = args.bias != nullptr ? args.bias[j] : 0.0;
        const double v =
            acc[j] * static_cast<double>(args.weight.ScaleForRow(j)) + bias;
        y[j] = ApplyActivation(args.activation, static_cast<float>(v));
      }
    }
  };
  ParallelFor(m, ThreadsFor(m * n * k), rows);
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckGemmArgs(const GemmArgs& args) {
  if (args.m < 0 || args.n < 0 || args.k < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("gemm sizes must be >= 0, got m = %d, n = %d, k = %d",
                        args.m, args.n, args.k));
  }
  // Stored shapes: A is [m, k] or [k, m]; B is [k, n] or [n, k].
  const int64_t a_cols = args.transpose_a ? args.m : args.k;
  const int64_t b_cols = args.transpose_b ? args.k : args.n;
  const int64_t a_rows = args.transpose_a ? args.k : args.m;
  const int64_t b_rows = args.transpose_b ? args.n : args.k;
  if (args.lda < std::max<int64_t>(1, a_cols)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "gemm lda is %d, must be >= max(1, %d) (A stored %s)", args.lda, a_cols,
        args.transpose_a ? "[k, m]" : "[m, k]"));
  }
  if (args.ldb < std::max<int64_t>(1, b_cols)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "gemm ldb is %d, must be >= max(1, %d) (B stored %s)", args.ldb, b_cols,
        args.transpose_b ? "[n, k]" : "[k, n]"));
  }
  if (args.ldc < std::max<int64_t>(1, args.n)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "gemm ldc is %d, must be >= max(1, n = %d)", args.ldc, args.n));
  }
  if (a_rows > 0 && a_cols > 0 && args.a == nullptr) {
    return absl::InvalidArgumentError("gemm A is null but op(A) is not empty");
  }
  if (b_rows > 0 && b_cols > 0 && args.b == nullptr) {
    return absl::InvalidArgumentError("gemm B is null but op(B) is not empty");
  }
  if (args.m > 0 && args.n > 0 && args.c == nullptr) {
    return absl::InvalidArgumentError("gemm C is null but C is not empty");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<TrainingBackend>> CreateCpuTrainingBackend(
    const CpuTrainingBackendOptions& options) {
  int threads = options.num_threads;
  if (threads <= 0) {
    threads =
        static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  }
  return std::make_unique<CpuTrainingBackend>(threads);
}

}  // namespace bitnet::training

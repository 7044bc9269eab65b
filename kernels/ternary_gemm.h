// y = act(x @ W^T * scale + bias) for a packed ternary W: the CPU oracle and
// the fast CPU path. The CUDA kernels (kernels/cuda/) compute the same function
// and are tested against ReferenceTernaryGemm.
#ifndef BITNET_KERNELS_TERNARY_GEMM_H_
#define BITNET_KERNELS_TERNARY_GEMM_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/activation.h"
#include "kernels/ternary_format.h"

namespace bitnet {

// Arguments of one ternary linear layer applied to a batch. Built on the host,
// passed by value. All pointers are host memory for the CPU functions.
struct TernaryGemmArgs {
  int64_t m = 0;                 // batch rows
  const float* x = nullptr;      // [m, weight.cols] row-major
  PackedTernaryView weight;      // [n = weight.rows, k = weight.cols]
  const float* bias = nullptr;   // [n] or nullptr
  ActivationQuant act_quant = ActivationQuant::kNone;
  Activation activation = Activation::kIdentity;
  float* y = nullptr;            // [m, n] row-major, fully overwritten
};

// Checks shapes and pointers; INVALID_ARGUMENT naming the field otherwise.
// m may be 0 (nothing to do). K (weight.cols) is limited to 2^24 so int32
// accumulators cannot overflow (|acc| <= 128 * K). Does not read the weight
// codes: validate data from outside with ValidatePacked first.
absl::Status CheckTernaryGemmArgs(const TernaryGemmArgs& args);

// The oracle: plain loops, obviously right. fp32 mode accumulates in double
// and rounds once; int8 mode accumulates in int32.
//   none: y = act(float(sum_k double(x[k]) * q[k] * double(scale) + bias))
//   int8: y = act(Int8Dequantize(acc, scale, s, bias))  (see activation.h)
absl::Status ReferenceTernaryGemm(const TernaryGemmArgs& args);

// The fast CPU path's execution layout of one weight matrix, prepared once
// (e.g. when a model loads) and reused by every call. Owns its memory
// (about rows * ceil(cols / 128) * 32 bytes, i.e. the packed size), is
// immutable after Prepare and safe to share between threads. Layout (private
// to the CPU backend, never written to files): for each row, for each group of
// 128 columns, 32 bytes; bits 2p..2p+1 of byte b hold the code of column
// 128 * group + 32 * p + b (padding code 1), so one 32-byte load plus a shift
// and a mask yields 32 consecutive codes.
class CpuTernaryWeights {
 public:
  static constexpr int64_t kGroupCols = 128;
  static constexpr int64_t kGroupBytes = 32;

  // Validates `packed` (ValidatePacked) and converts it. The view's buffers
  // are not referenced afterwards. Errors: INVALID_ARGUMENT as ValidatePacked.
  static absl::StatusOr<CpuTernaryWeights> Prepare(const PackedTernaryView& packed);

  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  ScaleGranularity granularity() const { return granularity_; }
  // ceil(cols / 128).
  int64_t groups() const { return groups_; }
  // groups() * 32 bytes of row `row`.
  const uint8_t* row_codes(int64_t row) const {
    return codes_.data() + row * groups_ * kGroupBytes;
  }
  float scale(int64_t row) const { return scales_[row]; }
  size_t memory_bytes() const { return codes_.size() + scales_.size() * sizeof(float); }

 private:
  CpuTernaryWeights() = default;
  int64_t rows_ = 0;
  int64_t cols_ = 0;
  int64_t groups_ = 0;
  ScaleGranularity granularity_ = ScaleGranularity::kPerRow;
  std::vector<uint8_t> codes_;   // [rows, groups, 32]
  std::vector<float> scales_;    // [rows]; per-tensor scale repeated
};

struct CpuGemmOptions {
  int num_threads = 0;     // <= 0: std::thread::hardware_concurrency()
  bool allow_simd = true;  // false: the portable scalar kernels (for tests)
};

// True when this CPU runs the AVX2 kernels (checked once at run time).
bool CpuHasAvx2();

// The fast CPU path: SIMD chosen at run time (AVX2 at least, scalar fallback)
// and `num_threads` threads (<= 0: all hardware threads). Same numerics as the
// oracle: int8 mode identical; none mode accumulates in float within chunks of
// 512 columns and in double across chunks, so it stays within 1e-5 of the
// oracle relative to the dot product's magnitude (sum |x_k q_k| * scale).
// This overload validates args.weight and prepares it on every call; serving
// code should Prepare once and use the overload below.
// Threads are started per call and joined before return; the function is
// thread-safe for distinct outputs. Errors: INVALID_ARGUMENT (args, weights).
absl::Status CpuTernaryGemm(const TernaryGemmArgs& args, int num_threads = 0);

// Same with prepared weights. `weights` must have args.weight's shape;
// args.weight.words and args.weight.scales are not read (may be null): the
// codes and scales come from `weights`.
absl::Status CpuTernaryGemm(const TernaryGemmArgs& args,
                            const CpuTernaryWeights& weights,
                            const CpuGemmOptions& options = {});

// int8 mode's integer accumulators, [m, n]: acc[i][j] = sum_k xq[i][k] * q[j][k].
// Used by tests that require bit-identical accumulation across backends.
void ReferenceInt8Accumulators(const int8_t* xq, int64_t m,
                               const PackedTernaryView& weight, int32_t* acc);

}  // namespace bitnet

#endif  // BITNET_KERNELS_TERNARY_GEMM_H_

// BitLinear: the drop-in equivalent of the reference project's ternary linear
// layer (BitLinearTriton): latent fp32 weights for training, a packed ternary
// matrix for inference, and one set of numerics for both.
//
//   ForwardTraining: fake quantization from the latent weights, evaluated in
//     exactly the packed path's float operations, so it returns the SAME
//     floats as ForwardPacked in int8 mode (and as ReferenceTernaryGemm in
//     both modes). The product is formed as (xq . q) * scale / s + bias, not
//     as (xq / s) . (q * scale): the two are equal in exact arithmetic (so the
//     straight-through estimator's gradients are unchanged), and only the first
//     is bit-identical to the integer kernels.
//   Pack / PrepareInference / ForwardPacked: the inference path through
//     QuantizeAndPack and the fast CPU kernels (CpuTernaryGemm).
//
// Thread-safety: const methods may run concurrently; the mutable_* accessors
// and PrepareInference need exclusive access. Backward/STE is not here yet:
// the latent weights and bias are exposed for it.
#ifndef BITNET_KERNELS_BIT_LINEAR_H_
#define BITNET_KERNELS_BIT_LINEAR_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/activation.h"
#include "kernels/ternary_format.h"
#include "kernels/ternary_gemm.h"

namespace bitnet {

struct BitLinearOptions {
  int64_t in_features = 0;   // K
  int64_t out_features = 0;  // N
  bool has_bias = false;
  ScaleGranularity granularity = ScaleGranularity::kPerRow;
  ActivationQuant act_quant = ActivationQuant::kInt8;
  Activation activation = Activation::kIdentity;
};

class BitLinear {
 public:
  // `weight` is [out_features, in_features] row-major fp32 (the latent
  // weights); `bias` has out_features entries when options.has_bias, else it
  // must be empty. Errors: INVALID_ARGUMENT for non-positive features, size
  // mismatches, non-finite values or unknown enum values.
  static absl::StatusOr<std::unique_ptr<BitLinear>> Create(
      const BitLinearOptions& options, std::vector<float> weight,
      std::vector<float> bias = {});

  const BitLinearOptions& options() const { return options_; }
  std::span<const float> latent_weight() const { return weight_; }
  std::span<const float> bias() const { return bias_; }
  // Writable latent weights (for an optimizer step). Invalidates the prepared
  // inference weights: call PrepareInference again before ForwardPacked.
  std::span<float> mutable_latent_weight() {
    prepared_.reset();
    return weight_;
  }
  // Writable bias; ForwardPacked reads the bias at call time, so no re-prepare.
  std::span<float> mutable_bias() { return bias_; }

  // y[m, out] = act(fake-quantized layer(x[m, in])). Errors: INVALID_ARGUMENT
  // for m < 0, null pointers with m > 0, or latent weights that became
  // non-finite.
  absl::Status ForwardTraining(const float* x, int64_t m, float* y) const;

  // The latent weights quantized and packed (interchange layout).
  absl::StatusOr<PackedTernaryMatrix> Pack() const;

  // Packs the current latent weights and prepares the CPU execution layout
  // that ForwardPacked uses (the reference project's `pack_weights()`).
  absl::Status PrepareInference();
  bool inference_ready() const { return prepared_.has_value(); }
  const PackedTernaryMatrix* packed() const {
    return prepared_.has_value() ? &prepared_->packed : nullptr;
  }

  // y[m, out] via the packed inference path (CpuTernaryGemm). Errors:
  // FAILED_PRECONDITION before PrepareInference or after the latent weights
  // were handed out for writing; INVALID_ARGUMENT as CpuTernaryGemm.
  absl::Status ForwardPacked(const float* x, int64_t m, float* y,
                             const CpuGemmOptions& cpu_options = {}) const;

 private:
  struct Prepared {
    PackedTernaryMatrix packed;
    CpuTernaryWeights cpu;
  };
  BitLinear(const BitLinearOptions& options, std::vector<float> weight,
            std::vector<float> bias)
      : options_(options), weight_(std::move(weight)), bias_(std::move(bias)) {}

  BitLinearOptions options_;
  std::vector<float> weight_;  // [out, in]
  std::vector<float> bias_;    // [out] or empty
  std::optional<Prepared> prepared_;
};

}  // namespace bitnet

#endif  // BITNET_KERNELS_BIT_LINEAR_H_

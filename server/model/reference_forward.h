// The whole-model CPU oracle: chains ReferenceTernaryGemm (kernels/
// ternary_gemm.h) over the layers. Server and backend tests compare their
// outputs against this. Slow by design (plain loops); thread-safe.
#ifndef BITNET_SERVER_MODEL_REFERENCE_FORWARD_H_
#define BITNET_SERVER_MODEL_REFERENCE_FORWARD_H_

#include <cstdint>

#include "absl/status/status.h"
#include "server/model/model.h"

namespace bitnet {

// x: [rows, model.input_features()] row-major fp32 (host memory, not owned).
// y: [rows, model.output_features()], fully overwritten.
// Each layer i computes act_i(x_i @ W_i^T * scale_i + bias_i) with its own
// act_quant mode on its input. rows == 0 is a no-op.
// Errors: INVALID_ARGUMENT for rows < 0, null pointers with rows > 0, or a
// model whose tensor sizes do not match its specs (values are not re-checked:
// call ValidateModel on untrusted models).
absl::Status ReferenceForward(const Model& model, const float* x, int64_t rows, float* y);

}  // namespace bitnet

#endif  // BITNET_SERVER_MODEL_REFERENCE_FORWARD_H_

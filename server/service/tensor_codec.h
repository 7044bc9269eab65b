// Conversion between wire tensors (bitnet.v1.Tensor: raw little-endian
// bytes + dtype + shape) and the fp32 row matrices the batcher works on.
// Pure functions, thread-safe.
#ifndef BITNET_SERVER_SERVICE_TENSOR_CODEC_H_
#define BITNET_SERVER_SERVICE_TENSOR_CODEC_H_

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "bitnet/v1/inference.pb.h"
#include "server/host/element_type.h"

namespace bitnet {

// What an input tensor must look like.
struct InputExpectation {
  int64_t features = 0;       // shape[1]
  int64_t max_rows = 0;       // upper bound on shape[0]
  std::string_view field = "input";  // prefix of error messages
  std::string_view model_description;  // e.g. `model "demo" version 1`
};

// A validated input tensor's rows, not copied: a view of its bytes.
struct InputRows {
  const void* data = nullptr;  // rows * features elements of dtype
  ElementType dtype = ElementType::kF32;
  int64_t rows = 0;
};

// Validates `tensor` against `expect` without converting anything; `data`
// are the tensor's bytes (tensor.data(), or the same bytes moved elsewhere).
// INVALID_ARGUMENT naming the field and the expected value for: an
// unspecified or unknown dtype; a shape that is not [rows, features]; rows <
// 1 or rows > max_rows; a byte size other than rows*features*element size; a
// NaN or infinite element (the message gives its [row, column]; checked on
// the bits, vectorized).
absl::StatusOr<InputRows> ValidateInput(const v1::Tensor& tensor,
                                        std::string_view data,
                                        const InputExpectation& expect);

// ValidateInput, then converts to fp32, row-major [rows, features].
absl::StatusOr<std::vector<float>> DecodeInput(const v1::Tensor& tensor,
                                               const InputExpectation& expect);

// Sets *type to the wire dtype's element type; false (and *type unchanged)
// for DTYPE_UNSPECIFIED and unknown values.
bool ElementTypeOf(v1::DType dtype, ElementType* type);

// Bytes per element: 4, 2, 2; 0 for DTYPE_UNSPECIFIED / unknown values.
int64_t DTypeSize(v1::DType dtype);

// Fills `out` with `values` ([rows, cols] fp32) converted to `dtype`
// (DTYPE_UNSPECIFIED means FP32). INVALID_ARGUMENT for an unknown dtype.
absl::Status EncodeOutput(const float* values, int64_t rows, int64_t cols,
                          v1::DType dtype, v1::Tensor* out);
// The same from values of any element type (a batch's output rows): a copy
// when the types agree, else a (vectorized) conversion.
absl::Status EncodeOutput(const void* values, ElementType values_type,
                          int64_t rows, int64_t cols, v1::DType dtype,
                          v1::Tensor* out);

}  // namespace bitnet

#endif  // BITNET_SERVER_SERVICE_TENSOR_CODEC_H_

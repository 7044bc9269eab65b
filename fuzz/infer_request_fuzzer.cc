// libFuzzer target: inference request validation from raw protobuf bytes.
//
// The bytes are parsed as a bitnet.v1.InferRequest (what gRPC hands the
// service), then put through the checks InferenceService applies before a
// request reaches a batcher: output_dtype must be a known DType, and the
// input tensor goes through DecodeInput (server/service/tensor_codec.h)
// against a model with kFeatures inputs and a --max_request_rows of
// kMaxRows. Decoded rows are encoded back with EncodeOutput, as a response
// would be.
//
// Findings: any sanitizer report, and (FUZZ_CHECK):
//  - DecodeInput accepts only [rows, kFeatures] tensors with
//    1 <= rows <= kMaxRows, a known dtype, the exact byte size and finite
//    values; its errors are INVALID_ARGUMENT naming the field ("input.");
//  - decode -> encode in the same dtype reproduces the input bytes exactly
//    (all three dtypes represent the decoded values exactly);
//  - EncodeOutput rejects an unknown output_dtype exactly when
//    DType_IsValid says so.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/strings/match.h"
#include "bitnet/v1/inference.pb.h"
#include "fuzz/fuzz_util.h"
#include "server/service/tensor_codec.h"

namespace {

constexpr int64_t kFeatures = 8;
constexpr int64_t kMaxRows = 64;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  bitnet::v1::InferRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;

  bitnet::InputExpectation expect;
  expect.features = kFeatures;
  expect.max_rows = kMaxRows;
  expect.field = "input";
  expect.model_description = "model \"fuzz\" version 1";
  const bitnet::v1::Tensor& tensor = request.input();
  absl::StatusOr<std::vector<float>> decoded = bitnet::DecodeInput(tensor, expect);
  if (!decoded.ok()) {
    FUZZ_CHECK(decoded.status().code() == absl::StatusCode::kInvalidArgument,
               "bad input is INVALID_ARGUMENT");
    // Debian's Abseil has its own string_view (no starts_with).
    FUZZ_CHECK(absl::StartsWith(decoded.status().message(), "input."),
               "the error names the field");
    return 0;
  }
  FUZZ_CHECK(tensor.shape_size() == 2 && tensor.shape(1) == kFeatures,
             "accepted shape is [rows, features]");
  const int64_t rows = tensor.shape(0);
  FUZZ_CHECK(rows >= 1 && rows <= kMaxRows, "accepted rows within [1, max_rows]");
  FUZZ_CHECK(static_cast<int64_t>(decoded->size()) == rows * kFeatures, "rows * features values");
  for (float v : *decoded) FUZZ_CHECK(std::isfinite(v), "accepted values are finite");

  bitnet::v1::Tensor encoded;
  const absl::Status same = bitnet::EncodeOutput(decoded->data(), rows, kFeatures,
                                                 tensor.dtype(), &encoded);
  FUZZ_CHECK(same.ok(), "a decoded dtype encodes");
  FUZZ_CHECK(encoded.dtype() == tensor.dtype(), "same dtype");
  FUZZ_CHECK(encoded.shape_size() == 2 && encoded.shape(0) == rows &&
                 encoded.shape(1) == kFeatures,
             "encoded shape is [rows, features]");
  FUZZ_CHECK(encoded.data() == tensor.data(), "decode -> encode reproduces the bytes");

  bitnet::v1::Tensor response;
  const absl::Status out = bitnet::EncodeOutput(decoded->data(), rows, kFeatures,
                                                request.output_dtype(), &response);
  FUZZ_CHECK(out.ok() == bitnet::v1::DType_IsValid(request.output_dtype()),
             "EncodeOutput accepts exactly the known dtypes");
  return 0;
}

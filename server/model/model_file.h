// The packed model file: a safetensors file (safetensors.h) with, per layer i
// (0-based, in execution order):
//   layers.{i}.weight.packed  I32 [out, ceil(in/16)]  ternary codes (kernels/ternary_format.h)
//   layers.{i}.weight.scale   F32 [out] (per-row) or [1] (per-tensor)
//   layers.{i}.bias           F32 [out]      present iff the layer has a bias
//   layers.{i}.weight.latent  F32 [out, in]  optional fp32 master weights (fine-tuning)
// and __metadata__:
//   format          "bitnet-serve"
//   format_version  "1"
//   layers          JSON string: [{"in_features": K, "out_features": N,
//                     "activation": "identity"|"relu"|"gelu"|"silu",
//                     "act_quant": "none"|"int8", "bias": true|false,
//                     "scale": "per-row"|"per-tensor"}, ...]
// docs/model-format.md describes the format for users.
//
// Reading validates everything before a Model is returned; every failure is
// INVALID_ARGUMENT naming the tensor or metadata field with the expected and
// the found value (NOT_FOUND for a missing file): the safetensors rules, a
// missing or foreign format, an unsupported format_version, a malformed layer
// list, a missing tensor, a tensor that is not part of the format, wrong
// dtype or shape, layers that do not chain, invalid codes or padding codes,
// non-positive or non-finite scales, non-finite bias or latent values.
//
// All functions are thread-safe (no shared state).
#ifndef BITNET_SERVER_MODEL_MODEL_FILE_H_
#define BITNET_SERVER_MODEL_MODEL_FILE_H_

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/model/model.h"

namespace bitnet {

inline constexpr std::string_view kModelFormatName = "bitnet-serve";

// Reads and validates a model file.
absl::StatusOr<Model> ReadModelFile(const std::string& path);

// Parses and validates the bytes of a model file (e.g. received over an RPC).
absl::StatusOr<Model> ParseModelFile(std::string bytes);

// Validates `model` (ValidateModel) and writes it atomically: a temporary file
// next to `path`, fsync, rename, fsync of the directory. On error `path` is
// untouched.
absl::Status WriteModelFile(const Model& model, const std::string& path);

// The file's bytes. Precondition: every tensor has the size its LayerSpec
// says (ValidateModel passes, or fails only on values); values are written as
// they are, so a model with, e.g., a NaN scale serializes into a file that
// ParseModelFile rejects (tests rely on that). Returns an empty string, which
// no reader accepts, when the sizes are inconsistent.
std::string SerializeModelFile(const Model& model);

// Tensor names of layer `index`, shared by the reader, the writer and
// messages.
std::string PackedTensorName(int64_t index);  // layers.{i}.weight.packed
std::string ScaleTensorName(int64_t index);   // layers.{i}.weight.scale
std::string BiasTensorName(int64_t index);    // layers.{i}.bias
std::string LatentTensorName(int64_t index);  // layers.{i}.weight.latent

}  // namespace bitnet

#endif  // BITNET_SERVER_MODEL_MODEL_FILE_H_

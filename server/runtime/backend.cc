#include "server/runtime/backend.h"

#include <vector>

#include "absl/strings/str_format.h"

namespace bitnet {

absl::Status ModelInstance::ForwardRows(const ForwardArgs& args) {
  if (args.input_dtype == ElementType::kF32 &&
      args.output_dtype == ElementType::kF32) {
    return Forward(static_cast<const float*>(args.input), args.rows,
                   static_cast<float*>(args.output));
  }
  if (args.rows <= 0 || args.input == nullptr || args.output == nullptr) {
    // Forward() reports these with the backend's own message.
    return Forward(nullptr, args.rows, nullptr);
  }
  if (args.input_features <= 0 || args.output_features <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "forward: input_features %d and output_features %d must be positive",
        args.input_features, args.output_features));
  }
  std::vector<float> in(static_cast<size_t>(args.rows * args.input_features));
  std::vector<float> out(static_cast<size_t>(args.rows * args.output_features));
  ConvertElements(args.input, args.input_dtype, in.data(), ElementType::kF32,
                  args.rows * args.input_features);
  if (absl::Status s = Forward(in.data(), args.rows, out.data()); !s.ok()) {
    return s;
  }
  ConvertElements(out.data(), ElementType::kF32, args.output,
                  args.output_dtype, args.rows * args.output_features);
  return absl::OkStatus();
}

HostBuffer Backend::AllocateHostBuffer(size_t bytes) {
  return HostBuffer::Allocate(bytes);
}

}  // namespace bitnet

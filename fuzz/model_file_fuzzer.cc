// libFuzzer target: the model file reader (server/model/model_file.h,
// ParseModelFile) on arbitrary bytes: the safetensors layer below it plus
// the format's metadata, layer list, tensor shapes and values.
//
// Findings: any sanitizer report, and these invariants (FUZZ_CHECK):
//  - an accepted model passes ValidateModel (the reader promises to
//    validate everything before returning a Model);
//  - SerializeModelFile of it parses back to the same model, bit for bit;
//  - ReferenceForward runs on it (small models only, to keep executions
//    fast) and, when no intermediate value can overflow (see
//    MagnitudeBound), fills the whole output with non-NaN values.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "fuzz/fuzz_util.h"
#include "server/model/model.h"
#include "server/model/model_file.h"
#include "server/model/reference_forward.h"

namespace {

template <typename T>
bool SameBits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

bool SameModel(const bitnet::Model& a, const bitnet::Model& b) {
  if (a.layers.size() != b.layers.size()) return false;
  for (size_t i = 0; i < a.layers.size(); ++i) {
    const bitnet::Layer& x = a.layers[i];
    const bitnet::Layer& y = b.layers[i];
    if (x.spec.in_features != y.spec.in_features ||
        x.spec.out_features != y.spec.out_features ||
        x.spec.activation != y.spec.activation ||
        x.spec.act_quant != y.spec.act_quant || x.spec.has_bias != y.spec.has_bias ||
        x.weight.rows != y.weight.rows || x.weight.cols != y.weight.cols ||
        x.weight.granularity != y.weight.granularity ||
        !SameBits(x.weight.words, y.weight.words) ||
        !SameBits(x.weight.scales, y.weight.scales) || !SameBits(x.bias, y.bias) ||
        !SameBits(x.latent, y.latent)) {
      return false;
    }
  }
  return true;
}

// An upper bound on |value| after each layer for inputs bounded by `input`:
// |x W^T scale + bias| <= in * max|x| * max scale + max|bias| (int8
// quantization keeps |x| within max|x| up to rounding, covered by the 2x),
// and identity/relu/gelu/silu never grow a magnitude. Extreme scales can
// legitimately overflow to inf and then NaN (inf - inf), so only models
// whose bound stays finite are held to "no NaN".
double MagnitudeBound(const bitnet::Model& model, double input) {
  double bound = input;
  for (const bitnet::Layer& layer : model.layers) {
    double max_scale = 0, max_bias = 0;
    for (float s : layer.weight.scales) max_scale = std::max(max_scale, std::fabs(double{s}));
    for (float b : layer.bias) max_bias = std::max(max_bias, std::fabs(double{b}));
    bound = 2 * bound * static_cast<double>(layer.spec.in_features) * max_scale + max_bias;
  }
  return bound;
}

// Multiply-adds of one forward row; models above kMaxForwardWork skip the
// forward check so one execution stays in the millisecond range.
constexpr int64_t kMaxForwardWork = int64_t{1} << 18;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::StatusOr<bitnet::Model> model =
      bitnet::ParseModelFile(std::string(reinterpret_cast<const char*>(data), size));
  if (!model.ok()) {
    FUZZ_CHECK(!model.status().message().empty(), "errors say what was wrong");
    return 0;
  }
  const absl::Status valid = bitnet::ValidateModel(*model);
  if (!valid.ok()) std::fprintf(stderr, "ValidateModel: %s\n", valid.ToString().c_str());
  FUZZ_CHECK(valid.ok(), "an accepted model file passes ValidateModel");

  const std::string written = bitnet::SerializeModelFile(*model);
  FUZZ_CHECK(!written.empty(), "an accepted model serializes");
  absl::StatusOr<bitnet::Model> again = bitnet::ParseModelFile(written);
  if (!again.ok()) {
    std::fprintf(stderr, "re-parse: %s\n", again.status().ToString().c_str());
  }
  FUZZ_CHECK(again.ok(), "a serialized valid model parses");
  FUZZ_CHECK(SameModel(*model, *again), "the model survives a write/read round trip");

  int64_t work = 0;
  for (const bitnet::Layer& layer : model->layers) {
    work += layer.spec.in_features * layer.spec.out_features;
  }
  if (!model->layers.empty() && work <= kMaxForwardWork) {
    constexpr int64_t kRows = 2;
    std::vector<float> x(static_cast<size_t>(kRows * model->input_features()));
    for (size_t i = 0; i < x.size(); ++i) {
      x[i] = static_cast<float>(static_cast<int>(i % 7) - 3) * 0.25f;
    }
    // NaN marks "not written": the forward must overwrite every output.
    std::vector<float> y(static_cast<size_t>(kRows * model->output_features()),
                         std::nanf(""));
    const absl::Status forward =
        bitnet::ReferenceForward(*model, x.data(), kRows, y.data());
    if (!forward.ok()) {
      std::fprintf(stderr, "ReferenceForward: %s\n", forward.ToString().c_str());
    }
    FUZZ_CHECK(forward.ok(), "ReferenceForward runs a validated model");
    if (MagnitudeBound(*model, 0.75) < 1e30) {
      for (float v : y) FUZZ_CHECK(!std::isnan(v), "every output written, none NaN");
    }
  }
  return 0;
}

// Writes the seed corpora under fuzz/corpus/ (run by `scripts/fuzz.sh
// seeds`; the output is committed). Every seed is made by the project's own
// writers (SerializeModelFile, safetensors::Serialize, protobuf), so seeds
// are valid inputs that the fuzzers mutate from, and they stay valid if
// regenerated after a format change. Deterministic: same bytes every run.
//
// Usage: fuzz_make_seeds <corpus dir> <tests/fixtures dir>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "bitnet/v1/inference.pb.h"
#include "server/model/demo_model.h"
#include "server/host/half.h"
#include "server/model/model.h"
#include "server/model/model_file.h"
#include "server/model/safetensors.h"

namespace {

namespace fs = std::filesystem;
using bitnet::safetensors::DType;

void Die(const std::string& what) {
  std::fprintf(stderr, "fuzz_make_seeds: %s\n", what.c_str());
  std::exit(1);
}

void Write(const fs::path& dir, const std::string& name, const std::string& bytes) {
  fs::create_directories(dir);
  std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) Die("cannot write " + (dir / name).string());
}

std::vector<float> RandomFloats(bitnet::DemoRandom& random, int64_t n, double scale) {
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = static_cast<float>(random.NextNormal() * scale);
  return v;
}

bitnet::Layer MakeLayer(bitnet::DemoRandom& random, int64_t in, int64_t out,
                        bitnet::Activation activation, bitnet::ActivationQuant act_quant,
                        bitnet::ScaleGranularity granularity, bool bias, bool latent) {
  std::vector<float> weights = RandomFloats(random, in * out, 0.5);
  auto packed = bitnet::QuantizeAndPack(weights, out, in, granularity);
  if (!packed.ok()) Die(packed.status().ToString());
  bitnet::Layer layer;
  layer.spec = {in, out, activation, act_quant, bias};
  layer.weight = *std::move(packed);
  if (bias) layer.bias = RandomFloats(random, out, 0.1);
  if (latent) layer.latent = std::move(weights);
  return layer;
}

std::string ModelBytes(const bitnet::Model& model) {
  if (!bitnet::ValidateModel(model).ok()) Die("invalid seed model");
  std::string bytes = bitnet::SerializeModelFile(model);
  if (!bitnet::ParseModelFile(bytes).ok()) Die("seed model does not parse");
  return bytes;
}

// Tiny models covering every option of the format: 1-3 layers, per-row and
// per-tensor scales, bias and latent present or not, each activation and
// act_quant mode, in_features not a multiple of 16 (padding codes).
std::map<std::string, std::string> ModelSeeds() {
  using bitnet::Activation;
  using bitnet::ActivationQuant;
  using bitnet::ScaleGranularity;
  bitnet::DemoRandom random(0xf0221);
  std::map<std::string, std::string> seeds;
  bitnet::Model one;
  one.layers.push_back(MakeLayer(random, 5, 3, Activation::kIdentity, ActivationQuant::kNone,
                                 ScaleGranularity::kPerRow, false, false));
  seeds["one_layer_none_per_row"] = ModelBytes(one);
  bitnet::Model two;
  two.layers.push_back(MakeLayer(random, 20, 8, Activation::kRelu, ActivationQuant::kInt8,
                                 ScaleGranularity::kPerTensor, true, true));
  two.layers.push_back(MakeLayer(random, 8, 3, Activation::kIdentity, ActivationQuant::kInt8,
                                 ScaleGranularity::kPerTensor, true, true));
  seeds["two_layers_int8_per_tensor_bias_latent"] = ModelBytes(two);
  bitnet::Model three;
  three.layers.push_back(MakeLayer(random, 17, 16, Activation::kGelu, ActivationQuant::kNone,
                                   ScaleGranularity::kPerRow, true, false));
  three.layers.push_back(MakeLayer(random, 16, 4, Activation::kSilu, ActivationQuant::kInt8,
                                   ScaleGranularity::kPerRow, false, false));
  three.layers.push_back(MakeLayer(random, 4, 2, Activation::kIdentity, ActivationQuant::kNone,
                                   ScaleGranularity::kPerTensor, true, true));
  seeds["three_layers_mixed"] = ModelBytes(three);
  return seeds;
}

std::string Bytes(const void* p, size_t n) { return std::string(static_cast<const char*>(p), n); }

std::string Halves(const std::vector<float>& v, bool bf16) {
  std::string out;
  for (float x : v) {
    const uint16_t h = bf16 ? bitnet::FloatToBFloat16(x) : bitnet::FloatToHalf(x);
    out += Bytes(&h, 2);
  }
  return out;
}

std::string Serialize(const std::vector<bitnet::safetensors::TensorToWrite>& tensors,
                      const std::map<std::string, std::string>& metadata = {}) {
  auto bytes = bitnet::safetensors::Serialize(tensors, metadata);
  if (!bytes.ok()) Die(bytes.status().ToString());
  if (!bitnet::safetensors::SafetensorsFile::Parse(*bytes).ok()) Die("seed does not parse");
  return *std::move(bytes);
}

// Float nn.Linear-style files, the packer's input.
std::map<std::string, std::string> FloatModelSeeds() {
  bitnet::DemoRandom random(0xf0222);
  std::map<std::string, std::string> seeds;
  const std::vector<float> w0 = RandomFloats(random, 8 * 20, 0.3);
  const std::vector<float> b0 = RandomFloats(random, 8, 0.1);
  const std::vector<float> w1 = RandomFloats(random, 3 * 8, 0.3);
  const std::vector<float> w2 = RandomFloats(random, 2 * 3, 0.3);
  const std::string w1_f16 = Halves(w1, false), w2_bf16 = Halves(w2, true);
  seeds["f32_f16_bf16_three_layers"] = Serialize({
      {"fc.0.weight", DType::kF32, {8, 20}, bitnet::safetensors::BytesOf(w0)},
      {"fc.0.bias", DType::kF32, {8}, bitnet::safetensors::BytesOf(b0)},
      {"fc.2.weight", DType::kF16, {3, 8}, w1_f16},
      {"fc.10.weight", DType::kBF16, {2, 3}, w2_bf16},
  });
  const std::vector<float> single = RandomFloats(random, 4 * 33, 1.0);
  seeds["f32_one_layer"] =
      Serialize({{"proj.weight", DType::kF32, {4, 33}, bitnet::safetensors::BytesOf(single)}},
                {{"source", "fuzz seed"}});
  return seeds;
}

// Small files with the dtypes and shapes the packer never writes.
std::map<std::string, std::string> OtherSafetensorsSeeds() {
  std::map<std::string, std::string> seeds;
  const std::vector<int64_t> i64 = {-1, 0, std::numeric_limits<int64_t>::max()};
  const std::vector<double> f64 = {0.5, -2.0};
  const std::vector<uint8_t> u8 = {0, 1, 255, 7};
  const std::vector<int8_t> i8 = {-128, 127};
  const std::vector<int16_t> i16 = {-3};
  seeds["dtypes"] = Serialize(
      {{"i64", DType::kI64, {3}, bitnet::safetensors::BytesOf(i64)},
       {"f64", DType::kF64, {1, 2}, bitnet::safetensors::BytesOf(f64)},
       {"u8", DType::kU8, {2, 2}, bitnet::safetensors::BytesOf(u8)},
       {"bool", DType::kBool, {4}, bitnet::safetensors::BytesOf(u8)},
       {"i8", DType::kI8, {2}, bitnet::safetensors::BytesOf(i8)},
       {"i16", DType::kI16, {1}, bitnet::safetensors::BytesOf(i16)},
       {"scalar", DType::kF32, {}, std::string_view("\0\0\x80\x3f", 4)},
       {"empty", DType::kF32, {0, 5}, std::string_view()}},
      {{"format", "pt"}});
  seeds["no_tensors"] = Serialize({}, {});
  return seeds;
}

std::string Request(bitnet::v1::DType dtype, std::vector<int64_t> shape, std::string data,
                    bitnet::v1::DType output_dtype) {
  bitnet::v1::InferRequest request;
  request.set_model("demo");
  request.set_version(1);
  request.set_request_id("seed");
  request.set_output_dtype(output_dtype);
  request.mutable_input()->set_dtype(dtype);
  for (int64_t d : shape) request.mutable_input()->add_shape(d);
  request.mutable_input()->set_data(std::move(data));
  return request.SerializeAsString();
}

// InferRequests for a model with 8 input features (infer_request_fuzzer.cc).
std::map<std::string, std::string> RequestSeeds() {
  bitnet::DemoRandom random(0xf0223);
  std::map<std::string, std::string> seeds;
  const std::vector<float> x = RandomFloats(random, 3 * 8, 1.0);
  const std::string fp32 = Bytes(x.data(), 2 * 8 * 4);
  seeds["fp32_2x8"] = Request(bitnet::v1::DTYPE_FP32, {2, 8}, fp32, bitnet::v1::DTYPE_FP32);
  seeds["fp16_3x8_out_bf16"] =
      Request(bitnet::v1::DTYPE_FP16, {3, 8}, Halves(x, false), bitnet::v1::DTYPE_BF16);
  seeds["bf16_3x8_out_fp16"] =
      Request(bitnet::v1::DTYPE_BF16, {3, 8}, Halves(x, true), bitnet::v1::DTYPE_FP16);
  std::vector<float> with_nan(x.begin(), x.begin() + 8);
  with_nan[5] = std::numeric_limits<float>::quiet_NaN();
  seeds["fp32_nan"] = Request(bitnet::v1::DTYPE_FP32, {1, 8}, Bytes(with_nan.data(), 32),
                              bitnet::v1::DTYPE_UNSPECIFIED);
  seeds["wrong_shape"] = Request(bitnet::v1::DTYPE_FP32, {8}, Bytes(x.data(), 32),
                                 bitnet::v1::DTYPE_FP32);
  return seeds;
}

// FuzzedDataProvider takes integers from the end and bytes from the start:
// any bytes are a valid input, so a few fixed pseudo-random strings suffice.
std::map<std::string, std::string> QuantizeSeeds() {
  bitnet::DemoRandom random(0xf0224);
  std::map<std::string, std::string> seeds;
  for (int len : {16, 256, 2048}) {
    std::string s(static_cast<size_t>(len), '\0');
    for (char& c : s) c = static_cast<char>(random.NextU64() & 0xff);
    seeds["random_" + std::to_string(len)] = s;
  }
  // Normal floats (so QuantizeAndPack succeeds) followed by the shape bytes.
  const std::vector<float> w = RandomFloats(random, 64, 1.0);
  seeds["floats"] = Bytes(w.data(), w.size() * 4) + std::string("\x05\x0c\x00", 3);
  return seeds;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) Die("usage: fuzz_make_seeds <corpus dir> <tests/fixtures dir>");
  const fs::path corpus = argv[1];
  auto fixture = bitnet::safetensors::ReadFileToString(
      (fs::path(argv[2]) / "seed_packing.safetensors").string());
  if (!fixture.ok()) Die(fixture.status().ToString());

  for (const auto& [name, bytes] : ModelSeeds()) {
    Write(corpus / "model_file", name, bytes);
    Write(corpus / "safetensors", "model_" + name, bytes);
  }
  for (const auto& [name, bytes] : OtherSafetensorsSeeds()) {
    Write(corpus / "safetensors", name, bytes);
  }
  Write(corpus / "safetensors", "seed_packing_fixture", *fixture);
  for (const auto& [name, bytes] : FloatModelSeeds()) {
    Write(corpus / "safetensors", "float_" + name, bytes);
    // Byte 0: options (0: per-row, identity, int8, no latent, discovery;
    // 0x3b: per-tensor, silu, none, latent, explicit --layers); byte 1 odd:
    // raw mode (pack_converter_fuzzer.cc).
    Write(corpus / "pack_converter", "raw_discover_" + name, std::string("\x00\x01", 2) + bytes);
    Write(corpus / "pack_converter", "raw_layers_" + name, std::string("\x3b\x01", 2) + bytes);
  }
  // The reference project's fixture: its *.weight tensors are layers only
  // when named with --layers (flag 0x20), the other tensors are ignored.
  Write(corpus / "pack_converter", "raw_layers_seed_packing_fixture",
        std::string("\x22\x01", 2) + *fixture);
  Write(corpus / "pack_converter", "structured_zeros", std::string(64, '\0'));
  Write(corpus / "pack_converter", "structured_ones", std::string(256, '\x3c'));
  for (const auto& [name, bytes] : RequestSeeds()) Write(corpus / "infer_request", name, bytes);
  for (const auto& [name, bytes] : QuantizeSeeds()) Write(corpus / "quantize", name, bytes);
  std::printf("fuzz_make_seeds: wrote %s\n", corpus.string().c_str());
  return 0;
}

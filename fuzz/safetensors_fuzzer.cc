// libFuzzer target: the safetensors reader (server/model/safetensors.h) on
// arbitrary bytes.
//
// Findings: any sanitizer report, and these invariants (FUZZ_CHECK):
//  - an accepted file's tensors are sorted by name, lie inside the data
//    section, and hold exactly num_elements * dtype-size bytes;
//  - ToFloat succeeds exactly for F32/F16/BF16 tensors and yields
//    num_elements values;
//  - Serialize accepts whatever Parse accepted (except an empty tensor name,
//    which Serialize documents as an error) and Parse reads it back
//    unchanged: names, dtypes, shapes, bytes and metadata.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz/fuzz_util.h"
#include "server/model/safetensors.h"

namespace {

using bitnet::safetensors::DType;
using bitnet::safetensors::SafetensorsFile;
using bitnet::safetensors::TensorInfo;
using bitnet::safetensors::TensorToWrite;

void CheckAccepted(const SafetensorsFile& file, size_t file_size) {
  const std::vector<TensorInfo>& tensors = file.tensors();
  bool has_empty_name = false;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorInfo& t = tensors[i];
    if (i > 0) FUZZ_CHECK(tensors[i - 1].name < t.name, "tensors sorted by name");
    has_empty_name |= t.name.empty();
    FUZZ_CHECK(t.begin >= 0 && t.end >= t.begin, "data_offsets ordered");
    FUZZ_CHECK(static_cast<uint64_t>(t.end) <= file_size, "tensor inside the file");
    FUZZ_CHECK(t.num_bytes() == t.num_elements() * DTypeSize(t.dtype),
               "byte size == elements * dtype size");
    FUZZ_CHECK(file.Find(t.name) == &t, "Find returns the tensor");
    FUZZ_CHECK(static_cast<int64_t>(file.Data(t).size()) == t.num_bytes(),
               "Data() has num_bytes bytes");
    const bool is_float =
        t.dtype == DType::kF32 || t.dtype == DType::kF16 || t.dtype == DType::kBF16;
    auto floats = file.ToFloat(t);
    FUZZ_CHECK(floats.ok() == is_float, "ToFloat succeeds exactly for float dtypes");
    if (floats.ok()) {
      FUZZ_CHECK(static_cast<int64_t>(floats->size()) == t.num_elements(),
                 "ToFloat yields num_elements values");
    }
  }

  std::vector<TensorToWrite> to_write;
  for (const TensorInfo& t : tensors) {
    to_write.push_back({t.name, t.dtype, t.shape, file.Data(t)});
  }
  absl::StatusOr<std::string> bytes =
      bitnet::safetensors::Serialize(to_write, file.metadata());
  if (has_empty_name) {
    FUZZ_CHECK(!bytes.ok(), "Serialize rejects an empty tensor name");
    return;
  }
  if (!bytes.ok()) {
    std::fprintf(stderr, "Serialize: %s\n", bytes.status().ToString().c_str());
  }
  FUZZ_CHECK(bytes.ok(), "Serialize accepts a file Parse accepted");
  absl::StatusOr<SafetensorsFile> again = SafetensorsFile::Parse(*std::move(bytes));
  if (!again.ok()) {
    std::fprintf(stderr, "re-Parse: %s\n", again.status().ToString().c_str());
  }
  FUZZ_CHECK(again.ok(), "Parse accepts what Serialize wrote");
  FUZZ_CHECK(again->tensors().size() == tensors.size(), "same tensor count");
  FUZZ_CHECK(again->metadata() == file.metadata(), "same metadata");
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorInfo& a = tensors[i];
    const TensorInfo& b = again->tensors()[i];
    FUZZ_CHECK(a.name == b.name && a.dtype == b.dtype && a.shape == b.shape,
               "same name, dtype and shape after the round trip");
    FUZZ_CHECK(file.Data(a) == again->Data(b), "same bytes after the round trip");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(std::move(bytes));
  if (!file.ok()) {
    FUZZ_CHECK(!file.status().message().empty(), "errors say what was wrong");
    return 0;
  }
  CheckAccepted(*file, size);
  return 0;
}

// safetensors files: reader and writer (https://github.com/huggingface/safetensors).
//
// Layout: 8-byte little-endian u64 N, N bytes of UTF-8 JSON header, then the
// data section. The header maps tensor names to
//   {"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]}
// (offsets relative to the data section) plus an optional "__metadata__"
// object of string -> string. Tensor data is raw little-endian, row-major.
//
// The reader trusts nothing: every rule below is checked before any tensor is
// exposed, and a violation is INVALID_ARGUMENT naming the tensor (or header
// field) with the expected and the found value:
//   file shorter than 8 bytes; header length larger than the file or than
//   kMaxHeaderBytes; header not JSON, not an object, or with a duplicate key;
//   a tensor entry that is not {dtype, shape, data_offsets}; unknown dtype;
//   shape entries not non-negative integers or a product overflowing int64;
//   data_offsets not two non-negative integers, end < begin, or past the end
//   of the data section; byte size != product(shape) * dtype size;
//   overlapping tensors; gaps between tensors or trailing bytes after the
//   last one (the data section must be covered exactly, as the Python
//   implementation writes it); __metadata__ not an object of strings.
// A missing file is NOT_FOUND; other I/O failures are the errno's status.
//
// Thread-safety: SafetensorsFile is immutable after Parse/Read; const methods
// may be called from any thread.
#ifndef BITNET_SERVER_MODEL_SAFETENSORS_H_
#define BITNET_SERVER_MODEL_SAFETENSORS_H_

#include <cstdint>
#include <cstring>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace bitnet::safetensors {

// Upper bound on the JSON header; the Python implementation uses 100 MB too.
inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;

enum class DType {
  kBool, kU8, kI8, kI16, kU16, kF16, kBF16, kI32, kU32, kF32, kF64, kI64, kU64
};

std::string_view DTypeName(DType dtype);  // "F32", "BF16", ...
int64_t DTypeSize(DType dtype);           // bytes per element
// INVALID_ARGUMENT listing the supported names when `name` is unknown.
absl::StatusOr<DType> ParseDType(std::string_view name);

// Formats a shape as "[2, 3]" for messages.
std::string ShapeString(std::span<const int64_t> shape);

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  int64_t begin = 0;  // byte offset into the data section
  int64_t end = 0;

  int64_t num_elements() const;
  int64_t num_bytes() const { return end - begin; }
};

// A fully validated safetensors file held in memory.
class SafetensorsFile {
 public:
  // Takes ownership of the file's bytes. Errors: see the file comment.
  static absl::StatusOr<SafetensorsFile> Parse(std::string bytes);
  // Reads the whole file, then Parse. NOT_FOUND when it does not exist.
  static absl::StatusOr<SafetensorsFile> Read(const std::string& path);

  // Tensors sorted by name.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const {
    return metadata_;
  }
  // nullptr when absent.
  const TensorInfo* Find(std::string_view name) const;
  // The tensor's raw bytes (little-endian). Not necessarily aligned for the
  // dtype: copy out with memcpy (or the helpers below), do not reinterpret.
  std::string_view Data(const TensorInfo& tensor) const;

  // Copies a tensor of dtype `expected` into a vector of T
  // (sizeof(T) == DTypeSize(expected)). INVALID_ARGUMENT naming the tensor
  // when the dtype differs.
  template <typename T>
  absl::StatusOr<std::vector<T>> Copy(const TensorInfo& tensor,
                                      DType expected) const;

  // F32, F16 or BF16 tensor converted to fp32; INVALID_ARGUMENT naming the
  // tensor for any other dtype.
  absl::StatusOr<std::vector<float>> ToFloat(const TensorInfo& tensor) const;

 private:
  SafetensorsFile() = default;

  std::string bytes_;
  int64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// One tensor to write. `data` is not owned and must outlive the call.
struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::string_view data;  // product(shape) * DTypeSize(dtype) bytes, LE
};

// Convenience for host vectors (the host is little-endian: checked at
// compile time in safetensors.cc).
template <typename T>
std::string_view BytesOf(const std::vector<T>& v) {
  return {reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T)};
}

// Serializes to the safetensors layout the Python library writes: tensors
// ordered by descending dtype size then name (so every tensor starts at a
// multiple of its element size), no gaps, header padded with spaces to a
// multiple of 8 bytes. INVALID_ARGUMENT naming the tensor for a duplicate or
// empty name, a name "__metadata__", a negative dimension or a data size that
// does not match the shape.
absl::StatusOr<std::string> Serialize(
    std::vector<TensorToWrite> tensors,
    const std::map<std::string, std::string>& metadata);

// Writes `contents` to `path` atomically: a temporary file in the same
// directory, fsync, rename over `path`, fsync of the directory. Readers see
// the old file or the new one, never a partial one; on error the temporary is
// removed and `path` is untouched. Errors carry the errno (e.g. NOT_FOUND for
// a missing directory, PERMISSION_DENIED).
absl::Status WriteFileAtomically(const std::string& path,
                                 std::string_view contents);

// Reads a whole file. NOT_FOUND when missing; other errno statuses otherwise.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// ---- implementation of the template ----

template <typename T>
absl::StatusOr<std::vector<T>> SafetensorsFile::Copy(const TensorInfo& tensor,
                                                     DType expected) const {
  static_assert(std::is_trivially_copyable_v<T>);
  if (tensor.dtype != expected || DTypeSize(expected) != sizeof(T)) {
    return absl::InvalidArgumentError(
        "tensor \"" + tensor.name + "\": dtype " +
        std::string(DTypeName(tensor.dtype)) + ", expected " +
        std::string(DTypeName(expected)));
  }
  std::vector<T> out(static_cast<size_t>(tensor.num_elements()));
  const std::string_view data = Data(tensor);
  if (!out.empty()) std::memcpy(out.data(), data.data(), data.size());
  return out;
}

}  // namespace bitnet::safetensors

#endif  // BITNET_SERVER_MODEL_SAFETENSORS_H_

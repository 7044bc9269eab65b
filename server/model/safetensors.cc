#include "server/model/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "server/host/half.h"
#include "server/model/string_view_compat.h"

namespace bitnet::safetensors {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; this code copies raw bytes");

using Json = nlohmann::json;

struct DTypeEntry {
  DType dtype;
  std::string_view name;
  int64_t size;
};

// A JSON value for an error message, cut short: a hostile header can hold
// megabytes in one value.
std::string Brief(const Json& value) {
  std::string text = value.dump();
  if (text.size() > 80) text = text.substr(0, 77) + "...";
  return text;
}

constexpr DTypeEntry kDTypes[] = {
    {DType::kBool, "BOOL", 1}, {DType::kU8, "U8", 1},     {DType::kI8, "I8", 1},
    {DType::kI16, "I16", 2},   {DType::kU16, "U16", 2},   {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2}, {DType::kI32, "I32", 4},   {DType::kU32, "U32", 4},
    {DType::kF32, "F32", 4},   {DType::kF64, "F64", 8},   {DType::kI64, "I64", 8},
    {DType::kU64, "U64", 8},
};

absl::Status Invalid(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("safetensors: ", what));
}

std::string Quoted(absl::string_view name) { return absl::StrCat("\"", name, "\""); }

// nlohmann keeps the last of duplicate keys silently; a duplicate tensor name
// would hide one entry, so duplicates are found with the parser callback
// (one key set per open object).
struct DuplicateKeyFinder {
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;

  bool operator()(int /*depth*/, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
        open_objects.emplace_back();
        break;
      case Json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case Json::parse_event_t::key:
        if (!open_objects.empty() && parsed.is_string() &&
            !open_objects.back().insert(parsed.get<std::string>()).second &&
            duplicate.empty()) {
          duplicate = parsed.get<std::string>();
        }
        break;
      default:
        break;
    }
    return true;
  }
};

absl::StatusOr<int64_t> NonNegativeInt(const Json& value, absl::string_view what) {
  if (!value.is_number_unsigned()) {
    return Invalid(absl::StrCat(what, " is ", Brief(value),
                                ", expected a non-negative integer"));
  }
  const uint64_t v = value.get<uint64_t>();
  if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return Invalid(absl::StrCat(what, " is ", v, ", larger than int64"));
  }
  return static_cast<int64_t>(v);
}

absl::StatusOr<TensorInfo> ParseTensorEntry(const std::string& name,
                                            const Json& entry,
                                            int64_t data_size) {
  const std::string tensor = absl::StrCat("tensor ", Quoted(name));
  if (!entry.is_object()) {
    return Invalid(absl::StrCat(tensor, ": header entry is ", entry.type_name(),
                                ", expected an object {dtype, shape, data_offsets}"));
  }
  for (const auto& [key, unused] : entry.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      return Invalid(absl::StrCat(tensor, ": unknown field ", Quoted(key),
                                  ", expected only dtype, shape, data_offsets"));
    }
  }
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(key)) {
      return Invalid(absl::StrCat(tensor, ": missing field \"", key, "\""));
    }
  }
  TensorInfo info;
  info.name = name;

  const Json& dtype = entry["dtype"];
  if (!dtype.is_string()) {
    return Invalid(absl::StrCat(tensor, ": dtype is ", Brief(dtype),
                                ", expected a string such as \"F32\""));
  }
  absl::StatusOr<DType> parsed = ParseDType(dtype.get<std::string>());
  if (!parsed.ok()) {
    return Invalid(absl::StrCat(tensor, ": ", parsed.status().message()));
  }
  info.dtype = *parsed;

  const Json& shape = entry["shape"];
  if (!shape.is_array()) {
    return Invalid(absl::StrCat(tensor, ": shape is ", Brief(shape),
                                ", expected an array of non-negative integers"));
  }
  int64_t elements = 1;
  for (size_t d = 0; d < shape.size(); ++d) {
    absl::StatusOr<int64_t> dim =
        NonNegativeInt(shape[d], absl::StrCat(tensor, ": shape[", d, "]"));
    if (!dim.ok()) return dim.status();
    if (__builtin_mul_overflow(elements, *dim, &elements)) {
      return Invalid(absl::StrCat(tensor, ": shape ", Brief(shape),
                                  " has more elements than int64 can count"));
    }
    info.shape.push_back(*dim);
  }
  int64_t expected_bytes = 0;
  if (__builtin_mul_overflow(elements, DTypeSize(info.dtype), &expected_bytes)) {
    return Invalid(absl::StrCat(tensor, ": shape ", Brief(shape),
                                " has more bytes than int64 can count"));
  }

  const Json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2) {
    return Invalid(absl::StrCat(tensor, ": data_offsets is ", Brief(offsets),
                                ", expected [begin, end]"));
  }
  absl::StatusOr<int64_t> begin =
      NonNegativeInt(offsets[0], absl::StrCat(tensor, ": data_offsets[0]"));
  if (!begin.ok()) return begin.status();
  absl::StatusOr<int64_t> end =
      NonNegativeInt(offsets[1], absl::StrCat(tensor, ": data_offsets[1]"));
  if (!end.ok()) return end.status();
  if (*end < *begin) {
    return Invalid(absl::StrCat(tensor, ": data_offsets [", *begin, ", ", *end,
                                "] end before begin"));
  }
  if (*end > data_size) {
    return Invalid(absl::StrCat(tensor, ": data_offsets [", *begin, ", ", *end,
                                "] out of range: the data section holds ",
                                data_size, " bytes"));
  }
  if (*end - *begin != expected_bytes) {
    return Invalid(absl::StrCat(
        tensor, ": data_offsets [", *begin, ", ", *end, "] hold ", *end - *begin,
        " bytes, expected ", expected_bytes, " (shape ", ShapeString(info.shape),
        " x ", ToAbsl(DTypeName(info.dtype)), " of ", DTypeSize(info.dtype), " bytes)"));
  }
  info.begin = *begin;
  info.end = *end;
  return info;
}

absl::Status ErrnoStatus(int err, absl::string_view what) {
  return absl::ErrnoToStatus(err, what);
}

// Closes the fd on scope exit.
class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  ~FdCloser() {
    if (fd_ >= 0) ::close(fd_);
  }
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;
  int Release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

absl::Status WriteAll(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, absl::StrCat("write ", path));
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

}  // namespace

std::string_view DTypeName(DType dtype) {
  for (const DTypeEntry& e : kDTypes) {
    if (e.dtype == dtype) return e.name;
  }
  return "?";
}

int64_t DTypeSize(DType dtype) {
  for (const DTypeEntry& e : kDTypes) {
    if (e.dtype == dtype) return e.size;
  }
  return 0;
}

absl::StatusOr<DType> ParseDType(std::string_view name) {
  std::vector<std::string> names;
  for (const DTypeEntry& e : kDTypes) {
    if (e.name == name) return e.dtype;
    names.emplace_back(e.name);
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype ", Quoted(ToAbsl(name)),
                                                 ", expected one of ",
                                                 absl::StrJoin(names, ", ")));
}

std::string ShapeString(std::span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

int64_t TensorInfo::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // validated not to overflow by Parse
  return n;
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Parse(std::string bytes) {
  const uint64_t file_size = bytes.size();
  if (file_size < 8) {
    return Invalid(absl::StrCat("file is ", file_size,
                                " bytes, shorter than the 8-byte header length"));
  }
  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes.data(), 8);
  if (header_size > kMaxHeaderBytes) {
    return Invalid(absl::StrCat("header length ", header_size,
                                " exceeds the limit of ", kMaxHeaderBytes, " bytes"));
  }
  if (header_size > file_size - 8) {
    return Invalid(absl::StrCat("header length ", header_size,
                                " is larger than the ", file_size - 8,
                                " bytes after the length field (truncated file?)"));
  }
  const std::string_view header(bytes.data() + 8, header_size);
  if (header.empty() || header.front() != '{') {
    return Invalid("header does not start with '{': not a JSON object");
  }
  DuplicateKeyFinder duplicates;
  Json json;
  try {
    json = Json::parse(header.begin(), header.end(), std::ref(duplicates));
  } catch (const Json::exception& e) {
    return Invalid(absl::StrCat("header is not valid JSON: ", e.what()));
  }
  if (!json.is_object()) {
    return Invalid(absl::StrCat("header is a JSON ", json.type_name(),
                                ", expected an object"));
  }
  if (!duplicates.duplicate.empty()) {
    return Invalid(absl::StrCat("header has the key ", Quoted(duplicates.duplicate),
                                " more than once"));
  }

  SafetensorsFile file;
  file.data_start_ = static_cast<int64_t>(8 + header_size);
  const int64_t data_size = static_cast<int64_t>(file_size) - file.data_start_;

  for (const auto& [name, entry] : json.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) {
        return Invalid(absl::StrCat("__metadata__ is a JSON ", entry.type_name(),
                                    ", expected an object of strings"));
      }
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          return Invalid(absl::StrCat("__metadata__ entry ", Quoted(key), " is ",
                                      Brief(value), ", expected a string"));
        }
        file.metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    if (name.empty()) return Invalid("a tensor has an empty name");
    absl::StatusOr<TensorInfo> info = ParseTensorEntry(name, entry, data_size);
    if (!info.ok()) return info.status();
    file.tensors_.push_back(*std::move(info));
  }
  // nlohmann objects iterate in key order, but do not depend on it.
  std::sort(file.tensors_.begin(), file.tensors_.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });

  // The data section must be covered exactly: sort by position and walk.
  std::vector<const TensorInfo*> by_offset;
  for (const TensorInfo& t : file.tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) {
              return std::tie(a->begin, a->end, a->name) <
                     std::tie(b->begin, b->end, b->name);
            });
  int64_t cursor = 0;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo* t : by_offset) {
    if (t->begin < cursor) {
      return Invalid(absl::StrCat("tensor ", Quoted(t->name), " at bytes [", t->begin,
                                  ", ", t->end, ") overlaps tensor ",
                                  Quoted(previous->name), " at [", previous->begin,
                                  ", ", previous->end, ")"));
    }
    if (t->begin > cursor) {
      return Invalid(absl::StrCat(
          "gap of ", t->begin - cursor, " unused bytes before tensor ", Quoted(t->name),
          ": it starts at ", t->begin, ", expected ", cursor,
          previous ? absl::StrCat(" (end of tensor ", Quoted(previous->name), ")")
                   : std::string(" (start of the data section)")));
    }
    cursor = t->end;
    if (t->end > t->begin) previous = t;
  }
  if (cursor != data_size) {
    return Invalid(absl::StrCat(
        data_size - cursor, " trailing bytes after the last tensor",
        previous ? absl::StrCat(" ", Quoted(previous->name)) : std::string(),
        ": the data section holds ", data_size, " bytes, tensors cover ", cursor));
  }
  file.bytes_ = std::move(bytes);
  return file;
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Read(const std::string& path) {
  absl::StatusOr<std::string> bytes = ReadFileToString(path);
  if (!bytes.ok()) return bytes.status();
  absl::StatusOr<SafetensorsFile> file = Parse(*std::move(bytes));
  if (!file.ok()) {
    return absl::Status(file.status().code(),
                        absl::StrCat(path, ": ", file.status().message()));
  }
  return file;
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = std::lower_bound(
      tensors_.begin(), tensors_.end(), name,
      [](const TensorInfo& t, std::string_view n) { return t.name < n; });
  return it != tensors_.end() && it->name == name ? &*it : nullptr;
}

std::string_view SafetensorsFile::Data(const TensorInfo& tensor) const {
  return std::string_view(bytes_).substr(
      static_cast<size_t>(data_start_ + tensor.begin),
      static_cast<size_t>(tensor.num_bytes()));
}

absl::StatusOr<std::vector<float>> SafetensorsFile::ToFloat(
    const TensorInfo& tensor) const {
  const std::string_view data = Data(tensor);
  std::vector<float> out(static_cast<size_t>(tensor.num_elements()));
  switch (tensor.dtype) {
    case DType::kF32:
      if (!out.empty()) std::memcpy(out.data(), data.data(), data.size());
      return out;
    case DType::kF16:
    case DType::kBF16:
      for (size_t i = 0; i < out.size(); ++i) {
        uint16_t bits;
        std::memcpy(&bits, data.data() + 2 * i, 2);
        out[i] = tensor.dtype == DType::kF16 ? HalfToFloat(bits) : BFloat16ToFloat(bits);
      }
      return out;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", Quoted(tensor.name), ": dtype ",
                       ToAbsl(DTypeName(tensor.dtype)), ", expected F32, F16 or BF16"));
  }
}

absl::StatusOr<std::string> Serialize(
    std::vector<TensorToWrite> tensors,
    const std::map<std::string, std::string>& metadata) {
  std::set<std::string> names;
  for (const TensorToWrite& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__") {
      return Invalid(absl::StrCat("cannot write a tensor named ", Quoted(t.name)));
    }
    if (!names.insert(t.name).second) {
      return Invalid(absl::StrCat("tensor ", Quoted(t.name), " given twice"));
    }
    int64_t bytes = DTypeSize(t.dtype);
    for (int64_t d : t.shape) {
      if (d < 0) {
        return Invalid(absl::StrCat("tensor ", Quoted(t.name), ": negative dimension in shape ",
                                    ShapeString(t.shape)));
      }
      if (__builtin_mul_overflow(bytes, d, &bytes)) {
        return Invalid(absl::StrCat("tensor ", Quoted(t.name), ": shape ",
                                    ShapeString(t.shape), " overflows int64"));
      }
    }
    if (static_cast<int64_t>(t.data.size()) != bytes) {
      return Invalid(absl::StrCat("tensor ", Quoted(t.name), ": ", t.data.size(),
                                  " bytes of data, expected ", bytes, " (shape ",
                                  ShapeString(t.shape), " x ", ToAbsl(DTypeName(t.dtype)), ")"));
    }
  }
  // Largest element size first keeps every tensor aligned to its element
  // size without padding (the data section starts 8-aligned).
  std::sort(tensors.begin(), tensors.end(),
            [](const TensorToWrite& a, const TensorToWrite& b) {
              const int64_t sa = DTypeSize(a.dtype), sb = DTypeSize(b.dtype);
              return sa != sb ? sa > sb : a.name < b.name;
            });
  Json header = Json::object();
  int64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    const int64_t end = offset + static_cast<int64_t>(t.data.size());
    header[t.name] = {{"dtype", std::string(DTypeName(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, end}}};
    offset = end;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string json = header.dump();
  json.append((8 - json.size() % 8) % 8, ' ');

  std::string out;
  out.reserve(8 + json.size() + static_cast<size_t>(offset));
  const uint64_t header_size = json.size();
  out.append(reinterpret_cast<const char*>(&header_size), 8);
  out += json;
  for (const TensorToWrite& t : tensors) out.append(t.data);
  return out;
}

absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("open ", path));
  FdCloser closer(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoStatus(errno, absl::StrCat("stat ", path));
  if (S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is a directory"));
  }
  std::string out;
  out.reserve(static_cast<size_t>(st.st_size));
  char buffer[1 << 16];
  while (true) {
    const ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, absl::StrCat("read ", path));
    }
    if (n == 0) break;
    out.append(buffer, static_cast<size_t>(n));
  }
  return out;
}

absl::Status WriteFileAtomically(const std::string& path, std::string_view contents) {
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash + 1);
  const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  if (base.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("output path ", Quoted(path),
                                                   " names a directory"));
  }
  // Hidden temp name in the target directory so rename() stays on one
  // filesystem (and is atomic there).
  std::string temp = (slash == std::string::npos ? std::string() : dir) + "." +
                     base + ".tmp.XXXXXX";
  const int fd = ::mkstemp(temp.data());
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("create a temporary file for ", path));
  absl::Status status;
  {
    FdCloser closer(fd);
    // mkstemp creates 0600; model files are ordinary readable data. A fixed
    // mode instead of reading the umask: umask() is process-wide and racy.
    if (::fchmod(fd, 0644) != 0) {
      status = ErrnoStatus(errno, absl::StrCat("chmod ", temp));
    }
    if (status.ok()) status = WriteAll(fd, contents, temp);
    if (status.ok() && ::fsync(fd) != 0) {
      status = ErrnoStatus(errno, absl::StrCat("fsync ", temp));
    }
    if (status.ok() && ::close(closer.Release()) != 0) {
      status = ErrnoStatus(errno, absl::StrCat("close ", temp));
    }
  }
  if (status.ok() && ::rename(temp.c_str(), path.c_str()) != 0) {
    status = ErrnoStatus(errno, absl::StrCat("rename ", temp, " to ", path));
  }
  if (!status.ok()) {
    ::unlink(temp.c_str());
    return status;
  }
  // Make the rename itself durable.
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) return ErrnoStatus(errno, absl::StrCat("open directory ", dir));
  FdCloser dir_closer(dir_fd);
  if (::fsync(dir_fd) != 0) return ErrnoStatus(errno, absl::StrCat("fsync directory ", dir));
  return absl::OkStatus();
}

}  // namespace bitnet::safetensors

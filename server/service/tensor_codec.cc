#include "server/service/tensor_codec.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace bitnet {

static_assert(std::endian::native == std::endian::little,
              "the wire format is little-endian; big-endian hosts would need "
              "byte swaps in tensor_codec.cc");

int64_t DTypeSize(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_FP32: return 4;
    case v1::DTYPE_FP16:
    case v1::DTYPE_BF16: return 2;
    default: return 0;
  }
}

bool ElementTypeOf(v1::DType dtype, ElementType* type) {
  switch (dtype) {
    case v1::DTYPE_FP32: *type = ElementType::kF32; return true;
    case v1::DTYPE_FP16: *type = ElementType::kF16; return true;
    case v1::DTYPE_BF16: *type = ElementType::kBF16; return true;
    default: return false;
  }
}

absl::StatusOr<InputRows> ValidateInput(const v1::Tensor& tensor,
                                        std::string_view data,
                                        const InputExpectation& expect) {
  // Debian's Abseil has its own string_view type: convert for StrCat.
  const absl::string_view f(expect.field.data(), expect.field.size());
  const absl::string_view model_description(expect.model_description.data(),
                                            expect.model_description.size());
  const int64_t elem = DTypeSize(tensor.dtype());
  if (elem == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        f, ".dtype: ", v1::DType_Name(tensor.dtype()).empty()
                          ? absl::StrCat(static_cast<int>(tensor.dtype()))
                          : v1::DType_Name(tensor.dtype()),
        "; expected DTYPE_FP32, DTYPE_FP16 or DTYPE_BF16"));
  }
  const std::string shape_str =
      absl::StrCat("[", absl::StrJoin(tensor.shape(), ", "), "]");
  if (tensor.shape_size() != 2 || tensor.shape(1) != expect.features) {
    return absl::InvalidArgumentError(absl::StrCat(
        f, ".shape: ", shape_str, "; expected [rows, ", expect.features,
        "] (input_features of ", model_description, ")"));
  }
  const int64_t rows = tensor.shape(0);
  if (rows < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(f, ".shape[0]: ", rows, " rows; expected at least 1"));
  }
  if (rows > expect.max_rows) {
    return absl::InvalidArgumentError(absl::StrCat(
        f, ".shape[0]: ", rows, " rows; expected at most ", expect.max_rows,
        " per request (the server's --max_request_rows); split the request"));
  }
  const int64_t count = rows * expect.features;
  const int64_t want_bytes = count * elem;
  if (static_cast<int64_t>(data.size()) != want_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        f, ".data: ", data.size(), " bytes; expected ", want_bytes,
        " (", rows, " x ", expect.features, " elements of ",
        v1::DType_Name(tensor.dtype()), ", ", elem, " bytes each)"));
  }
  InputRows in;
  in.data = data.data();
  in.rows = rows;
  ElementTypeOf(tensor.dtype(), &in.dtype);  // known: elem != 0
  if (const int64_t i = FindNonFinite(in.data, in.dtype, count); i >= 0) {
    float value;
    ConvertElements(data.data() + i * elem, in.dtype, &value, ElementType::kF32, 1);
    return absl::InvalidArgumentError(absl::StrCat(
        f, ".data: element [", i / expect.features, ", ", i % expect.features,
        "] is ", std::isnan(value) ? "NaN" : "infinite",
        "; expected finite values"));
  }
  return in;
}

absl::StatusOr<std::vector<float>> DecodeInput(const v1::Tensor& tensor,
                                               const InputExpectation& expect) {
  absl::StatusOr<InputRows> in = ValidateInput(
      tensor, std::string_view(tensor.data().data(), tensor.data().size()), expect);
  if (!in.ok()) return in.status();
  std::vector<float> out(static_cast<size_t>(in->rows * expect.features));
  ConvertElements(in->data, in->dtype, out.data(), ElementType::kF32,
                  static_cast<int64_t>(out.size()));
  return out;
}

absl::Status EncodeOutput(const float* values, int64_t rows, int64_t cols,
                          v1::DType dtype, v1::Tensor* out) {
  return EncodeOutput(values, ElementType::kF32, rows, cols, dtype, out);
}

absl::Status EncodeOutput(const void* values, ElementType values_type,
                          int64_t rows, int64_t cols, v1::DType dtype,
                          v1::Tensor* out) {
  if (dtype == v1::DTYPE_UNSPECIFIED) dtype = v1::DTYPE_FP32;
  const int64_t elem = DTypeSize(dtype);
  if (elem == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "output_dtype: ", static_cast<int>(dtype),
        "; expected DTYPE_FP32, DTYPE_FP16 or DTYPE_BF16"));
  }
  const int64_t count = rows * cols;
  out->set_dtype(dtype);
  out->clear_shape();
  out->add_shape(rows);
  out->add_shape(cols);
  ElementType type = ElementType::kF32;
  ElementTypeOf(dtype, &type);
  std::string* data = out->mutable_data();
  data->resize(static_cast<size_t>(count * elem));
  ConvertElements(values, values_type, data->data(), type, count);
  return absl::OkStatus();
}

}  // namespace bitnet

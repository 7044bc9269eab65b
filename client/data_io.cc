#include "client/data_io.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace bitnet {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian");

absl::Status AddRow(Rows* rows, const std::vector<float>& row,
                    absl::string_view where) {
  if (rows->rows > 0 && static_cast<int64_t>(row.size()) != rows->cols) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, " has ", row.size(), " values; expected ", rows->cols,
        " like the first row"));
  }
  rows->cols = static_cast<int64_t>(row.size());
  rows->values.insert(rows->values.end(), row.begin(), row.end());
  ++rows->rows;
  return absl::OkStatus();
}

// One CSV line -> numbers. `line_number` only names the line in errors.
absl::StatusOr<std::vector<float>> ParseCsvLine(absl::string_view line,
                                                size_t line_number) {
  std::vector<float> row;
  for (absl::string_view cell : absl::StrSplit(line, ',')) {
    cell = absl::StripAsciiWhitespace(cell);
    float v;
    if (!absl::SimpleAtof(cell, &v)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "CSV line ", line_number, ": \"", cell, "\" is not a number"));
    }
    row.push_back(v);
  }
  return row;
}

absl::StatusOr<Rows> JsonMatrix(const nlohmann::json& doc, absl::string_view what) {
  if (!doc.is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": expected an array of rows (arrays of numbers)"));
  }
  Rows rows;
  for (size_t i = 0; i < doc.size(); ++i) {
    if (!doc[i].is_array() || doc[i].empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, " row ", i, ": expected a non-empty array of numbers"));
    }
    std::vector<float> row;
    row.reserve(doc[i].size());
    for (const auto& v : doc[i]) {
      if (!v.is_number()) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, " row ", i, ": ", v.dump(), " is not a number"));
      }
      row.push_back(v.get<float>());
    }
    if (absl::Status s = AddRow(&rows, row, absl::StrCat(what, " row ", i)); !s.ok()) {
      return s;
    }
  }
  return rows;
}

bool LooksLikeJson(const std::string& path, absl::string_view text) {
  const absl::string_view trimmed = absl::StripLeadingAsciiWhitespace(text);
  return absl::EndsWith(path, ".json") ||
         (!trimmed.empty() && (trimmed[0] == '[' || trimmed[0] == '{'));
}

absl::Status CheckWidth(const Rows& rows, int64_t expected, absl::string_view what,
                        absl::string_view path) {
  if (expected > 0 && rows.cols != expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": ", what, " have ", rows.cols, " columns; the model expects ",
        expected));
  }
  return absl::OkStatus();
}

absl::Status CheckLabels(const std::vector<int32_t>& labels, int64_t classes,
                         absl::string_view path) {
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] < 0 || (classes > 0 && labels[i] >= classes)) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": label of row ", i, " is ", labels[i], "; expected 0..",
          classes - 1, " (output_features of the model)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<TrainingData> TrainingFromCsv(const std::string& path,
                                             absl::string_view text,
                                             const TrainingFormat& f) {
  if (f.input_features <= 0 || f.output_features <= 0) {
    return absl::InvalidArgumentError(
        "CSV training data needs the model's input and output widths");
  }
  const int64_t extra = f.loss == TrainingLoss::kMse ? f.output_features : 1;
  TrainingData data;
  size_t line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    auto row = ParseCsvLine(line, line_number);
    if (!row.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", row.status().message()));
    }
    if (static_cast<int64_t>(row->size()) != f.input_features + extra) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": CSV line ", line_number, " has ", row->size(), " values; expected ",
          f.input_features, " inputs + ",
          f.loss == TrainingLoss::kMse ? absl::StrCat(extra, " targets")
                                       : std::string("1 label"),
          " = ", f.input_features + extra));
    }
    data.inputs.values.insert(data.inputs.values.end(), row->begin(),
                              row->begin() + f.input_features);
    ++data.inputs.rows;
    if (f.loss == TrainingLoss::kMse) {
      data.targets.values.insert(data.targets.values.end(),
                                 row->begin() + f.input_features, row->end());
      ++data.targets.rows;
    } else {
      const float label = row->back();
      if (label != std::floor(label) || std::abs(label) > 1e9f) {
        return absl::InvalidArgumentError(absl::StrCat(
            path, ": CSV line ", line_number, ": label ", label,
            " is not an integer class"));
      }
      data.labels.push_back(static_cast<int32_t>(label));
    }
  }
  data.inputs.cols = f.input_features;
  if (f.loss == TrainingLoss::kMse) data.targets.cols = f.output_features;
  return data;
}

absl::StatusOr<TrainingData> TrainingFromJson(const std::string& path,
                                              absl::string_view text,
                                              const TrainingFormat& f) {
  nlohmann::json doc = nlohmann::json::parse(text, nullptr, false);
  if (doc.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON"));
  }
  if (!doc.is_object() || !doc.contains("inputs")) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": expected {\"inputs\": [[...]], \"targets\": [[...]]} or "
              "{\"inputs\": [[...]], \"labels\": [...]}"));
  }
  TrainingData data;
  auto inputs = JsonMatrix(doc["inputs"], "inputs");
  if (!inputs.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", inputs.status().message()));
  }
  data.inputs = *std::move(inputs);
  if (f.loss == TrainingLoss::kMse) {
    if (!doc.contains("targets")) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": loss mse needs \"targets\" (rows of floats)"));
    }
    auto targets = JsonMatrix(doc["targets"], "targets");
    if (!targets.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", targets.status().message()));
    }
    data.targets = *std::move(targets);
  } else {
    if (!doc.contains("labels") || !doc["labels"].is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": loss cross_entropy needs \"labels\" (an array of integers)"));
    }
    for (size_t i = 0; i < doc["labels"].size(); ++i) {
      const auto& v = doc["labels"][i];
      if (!v.is_number_integer()) {
        return absl::InvalidArgumentError(absl::StrCat(
            path, ": labels[", i, "] = ", v.dump(), " is not an integer"));
      }
      data.labels.push_back(v.get<int32_t>());
    }
  }
  return data;
}

// A minimal safetensors reader (8-byte little-endian header size, JSON
// header, raw data). The client does not link server/model, whose reader is
// the full one.
struct SafetensorsTensor {
  std::string dtype;
  std::vector<int64_t> shape;
  absl::string_view data;
};

absl::StatusOr<std::map<std::string, SafetensorsTensor>> ParseSafetensors(
    const std::string& path, absl::string_view bytes) {
  if (bytes.size() < 8) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", bytes.size(), " bytes; too short for safetensors"));
  }
  uint64_t header_size;
  std::memcpy(&header_size, bytes.data(), 8);
  if (header_size > bytes.size() - 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": header size ", header_size, " exceeds the file (", bytes.size(),
        " bytes)"));
  }
  nlohmann::json header =
      nlohmann::json::parse(bytes.substr(8, header_size), nullptr, false);
  if (header.is_discarded() || !header.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": safetensors header is not a JSON object"));
  }
  const absl::string_view data = bytes.substr(8 + header_size);
  std::map<std::string, SafetensorsTensor> tensors;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
        !entry.contains("data_offsets") || !entry["dtype"].is_string() ||
        !entry["shape"].is_array() || !entry["data_offsets"].is_array() ||
        entry["data_offsets"].size() != 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tensor \"", name, "\" lacks dtype, shape or data_offsets"));
    }
    SafetensorsTensor t;
    t.dtype = entry["dtype"].get<std::string>();
    uint64_t count = 1;
    for (const auto& d : entry["shape"]) {
      if (!d.is_number_unsigned()) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": tensor \"", name, "\" has a bad shape"));
      }
      t.shape.push_back(d.get<int64_t>());
      count *= d.get<uint64_t>();
    }
    const auto& off = entry["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor \"", name, "\" has bad data_offsets"));
    }
    const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    const uint64_t elem = (t.dtype == "F32" || t.dtype == "I32") ? 4 : 0;
    if (elem == 0) {
      // Other dtypes are legal safetensors but not training data here.
      tensors.emplace(name, std::move(t));
      continue;
    }
    if (begin > end || end > data.size() || end - begin != count * elem) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tensor \"", name, "\" data_offsets [", begin, ", ", end,
          ") do not hold ", count, " ", t.dtype, " values within ", data.size(),
          " data bytes"));
    }
    t.data = data.substr(begin, end - begin);
    tensors.emplace(name, std::move(t));
  }
  return tensors;
}

absl::StatusOr<TrainingData> TrainingFromSafetensors(const std::string& path,
                                                     absl::string_view bytes,
                                                     const TrainingFormat& f) {
  auto tensors = ParseSafetensors(path, bytes);
  if (!tensors.ok()) return tensors.status();
  const std::string prefix = f.split.empty() ? "" : f.split + ".";
  auto find = [&](const std::string& name, const std::string& dtype,
                  size_t rank) -> absl::StatusOr<const SafetensorsTensor*> {
    auto it = tensors->find(prefix + name);
    if (it == tensors->end()) {
      std::string names;
      for (const auto& [n, t] : *tensors) absl::StrAppend(&names, names.empty() ? "" : ", ", n);
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": no tensor \"", prefix + name, "\" (the file has: ", names, ")"));
    }
    if (it->second.dtype != dtype || it->second.shape.size() != rank) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tensor \"", prefix + name, "\" is ", it->second.dtype, " of rank ",
          it->second.shape.size(), "; expected ", dtype, " of rank ", rank));
    }
    return &it->second;
  };
  auto x = find("x", "F32", 2);
  if (!x.ok()) return x.status();
  TrainingData data;
  data.inputs.rows = (*x)->shape[0];
  data.inputs.cols = (*x)->shape[1];
  data.inputs.values.resize((*x)->data.size() / 4);
  std::memcpy(data.inputs.values.data(), (*x)->data.data(), (*x)->data.size());
  if (f.loss == TrainingLoss::kCrossEntropy) {
    auto labels = find("labels", "I32", 1);
    if (!labels.ok()) return labels.status();
    data.labels.resize((*labels)->data.size() / 4);
    std::memcpy(data.labels.data(), (*labels)->data.data(), (*labels)->data.size());
  } else {
    auto targets = find("targets", "F32", 2);
    if (!targets.ok()) return targets.status();
    data.targets.rows = (*targets)->shape[0];
    data.targets.cols = (*targets)->shape[1];
    data.targets.values.resize((*targets)->data.size() / 4);
    std::memcpy(data.targets.values.data(), (*targets)->data.data(),
                (*targets)->data.size());
  }
  return data;
}

}  // namespace

absl::StatusOr<Rows> ParseCsvRows(std::string_view text_view) {
  const absl::string_view text(text_view.data(), text_view.size());
  Rows rows;
  size_t line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    auto row = ParseCsvLine(line, line_number);
    if (!row.ok()) return row.status();
    if (absl::Status s = AddRow(&rows, *row, absl::StrCat("CSV line ", line_number));
        !s.ok()) {
      return s;
    }
  }
  return rows;
}

absl::StatusOr<Rows> ParseJsonRows(std::string_view text_view) {
  const absl::string_view text(text_view.data(), text_view.size());
  nlohmann::json doc = nlohmann::json::parse(text, nullptr, false);
  if (doc.is_discarded()) {
    return absl::InvalidArgumentError("input is not valid JSON");
  }
  if (doc.is_object() && doc.contains("rows")) doc = doc["rows"];
  if (!doc.is_array()) {
    return absl::InvalidArgumentError(
        "JSON input: expected an array of rows or {\"rows\": [...]}");
  }
  return JsonMatrix(doc, "JSON");
}

absl::StatusOr<std::string> ReadFileOrStdin(const std::string& path) {
  std::stringstream buffer;
  if (path == "-") {
    buffer << std::cin.rdbuf();
    return buffer.str();
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  buffer << in.rdbuf();
  return buffer.str();
}

absl::StatusOr<Rows> ReadRowsFile(const std::string& path) {
  auto text = ReadFileOrStdin(path);
  if (!text.ok()) return text.status();
  absl::StatusOr<Rows> rows =
      LooksLikeJson(path, *text) ? ParseJsonRows(*text) : ParseCsvRows(*text);
  if (!rows.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path == "-" ? "stdin" : path, ": ", rows.status().message()));
  }
  if (rows->rows == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path == "-" ? "stdin" : path, ": no rows"));
  }
  return rows;
}

absl::StatusOr<TrainingData> ReadTrainingFile(const std::string& path,
                                              const TrainingFormat& format) {
  auto bytes = ReadFileOrStdin(path);
  if (!bytes.ok()) return bytes.status();
  absl::StatusOr<TrainingData> data;
  if (absl::EndsWith(path, ".safetensors")) {
    data = TrainingFromSafetensors(path, *bytes, format);
  } else if (LooksLikeJson(path, *bytes)) {
    data = TrainingFromJson(path, *bytes, format);
  } else {
    data = TrainingFromCsv(path, *bytes, format);
  }
  if (!data.ok()) return data.status();
  if (data->inputs.rows == 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no training examples"));
  }
  if (absl::Status s = CheckWidth(data->inputs, format.input_features, "inputs", path);
      !s.ok()) {
    return s;
  }
  if (format.loss == TrainingLoss::kMse) {
    if (data->targets.rows != data->inputs.rows) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": ", data->inputs.rows, " input rows but ", data->targets.rows,
          " target rows"));
    }
    if (absl::Status s =
            CheckWidth(data->targets, format.output_features, "targets", path);
        !s.ok()) {
      return s;
    }
  } else {
    if (static_cast<int64_t>(data->labels.size()) != data->inputs.rows) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": ", data->inputs.rows, " input rows but ", data->labels.size(),
          " labels"));
    }
    if (absl::Status s = CheckLabels(data->labels, format.output_features, path);
        !s.ok()) {
      return s;
    }
  }
  for (size_t i = 0; i < data->inputs.values.size(); ++i) {
    if (!std::isfinite(data->inputs.values[i])) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": input row ", i / data->inputs.cols, " column ",
          i % data->inputs.cols, " is not finite"));
    }
  }
  return data;
}

}  // namespace bitnet

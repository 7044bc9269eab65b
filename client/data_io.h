// Reading rows and training data for bitnet-cli: CSV, JSON and safetensors
// files (no gRPC here, so it is unit-tested on its own).
//
// Row files (infer):
//   CSV   one row per line, comma-separated numbers; blank lines and lines
//         starting with '#' are skipped.
//   JSON  an array of rows ([[1, 2], [3, 4]]) or {"rows": [...]}.
// Training files (finetune):
//   CSV   one example per line: the input_features inputs, then either the
//         output_features targets (loss mse) or one integer label
//         (cross_entropy).
//   JSON  {"inputs": [[...], ...], "targets": [[...], ...]} (mse) or
//         {"inputs": [...], "labels": [3, 1, ...]} (cross_entropy).
//   safetensors  (the tests' digits format) F32 "<split>.x" [rows, in] plus
//         I32 "<split>.labels" [rows] or F32 "<split>.targets" [rows, out];
//         split "" means tensors named "x", "labels", "targets".
// Every error is INVALID_ARGUMENT (NOT_FOUND for a missing file) and names
// the file, line/row/tensor and what was expected.
#ifndef BITNET_CLIENT_DATA_IO_H_
#define BITNET_CLIENT_DATA_IO_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace bitnet {

// A dense fp32 matrix, row-major.
struct Rows {
  std::vector<float> values;
  int64_t rows = 0;
  int64_t cols = 0;
};

absl::StatusOr<Rows> ParseCsvRows(std::string_view text);
absl::StatusOr<Rows> ParseJsonRows(std::string_view text);

// The contents of `path`, "-" = stdin. NOT_FOUND when it cannot be read.
absl::StatusOr<std::string> ReadFileOrStdin(const std::string& path);

// Rows from a CSV or JSON file ("-" = stdin). JSON when the name ends in
// .json or the text starts with '[' or '{'. INVALID_ARGUMENT for no rows.
absl::StatusOr<Rows> ReadRowsFile(const std::string& path);

enum class TrainingLoss { kMse, kCrossEntropy };

struct TrainingData {
  Rows inputs;
  // kMse: [rows, output_features]; empty for kCrossEntropy.
  Rows targets;
  // kCrossEntropy: one label per row; empty for kMse.
  std::vector<int32_t> labels;
};

struct TrainingFormat {
  TrainingLoss loss = TrainingLoss::kMse;
  // The model's row widths (from GetModel): CSV lines are split with them,
  // and every format is checked against them.
  int64_t input_features = 0;
  int64_t output_features = 0;
  // safetensors: tensor name prefix (see the file comment).
  std::string split = "train";
};

// Reads a training file; the format follows the extension (.csv, .json,
// .safetensors); "-" reads CSV or JSON from stdin. Labels must lie in
// [0, output_features).
absl::StatusOr<TrainingData> ReadTrainingFile(const std::string& path,
                                              const TrainingFormat& format);

}  // namespace bitnet

#endif  // BITNET_CLIENT_DATA_IO_H_

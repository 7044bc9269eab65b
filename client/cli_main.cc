// bitnet-cli: command-line client for bitnet-server.
//
//   bitnet-cli [--address host:port] health [--service NAME]
//   bitnet-cli [--address host:port] models
//   bitnet-cli [--address host:port] infer --model NAME [--model_version N]
//       [--input FILE.csv|FILE.json|-] [--random N [--seed S]]
//       [--output csv|json]
//
// Input rows: CSV (one row per line, comma-separated numbers; blank lines
// and lines starting with '#' are skipped) or JSON (an array of rows, or
// {"rows": [...]}); "-" reads stdin and detects the format from its first
// character. --random N sends N rows of uniform [-1, 1) values instead.
// Exit codes: 0 ok, 1 RPC error (the gRPC code and message are printed),
// 2 usage or input error.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "client/client.h"

ABSL_FLAG(std::string, address, "localhost:50051", "server host:port");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(30), "deadline of each call");
ABSL_FLAG(std::string, service, "", "health: service to check (\"\" = server, or a model name)");
ABSL_FLAG(std::string, model, "", "infer: model name");
ABSL_FLAG(uint64_t, model_version, 0, "infer: model version (0 = latest)");
ABSL_FLAG(std::string, input, "", "infer: rows from FILE.csv, FILE.json or - (stdin)");
ABSL_FLAG(int64_t, random, 0, "infer: send N random rows instead of --input");
ABSL_FLAG(uint64_t, seed, 1, "infer: seed of --random");
ABSL_FLAG(std::string, output, "csv", "infer: output format, csv or json");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA bundle: use TLS and verify the server");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate (mTLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM client key (mTLS)");

namespace {

constexpr int kOk = 0;
constexpr int kRpcError = 1;
constexpr int kUsage = 2;

constexpr char kUsageText[] =
    "usage: bitnet-cli [--address host:port] [--timeout 30s] COMMAND [flags]\n"
    "commands:\n"
    "  health [--service NAME]          grpc.health.v1 status of the server or a model\n"
    "  models                           list loaded models\n"
    "  infer --model NAME [--model_version N] [--input FILE.csv|FILE.json|-]\n"
    "        [--random N [--seed S]] [--output csv|json]\n"
    "flags: --tls_ca, --tls_cert, --tls_key for TLS/mTLS\n"
    "exit codes: 0 ok, 1 RPC error, 2 usage or input error\n";

int Usage(const std::string& message) {
  if (!message.empty()) std::cerr << "bitnet-cli: " << message << "\n";
  std::cerr << kUsageText;
  return kUsage;
}

int RpcError(const absl::Status& status) {
  std::cerr << "bitnet-cli: rpc failed: "
            << absl::StatusCodeToString(status.code()) << ": "
            << status.message() << "\n";
  return kRpcError;
}

// Parses argv with Abseil's registry but our own error handling (Abseil's
// ParseCommandLine exits with 1 on a bad flag; we want 2). Flags may come
// before or after the command.
bool ParseArgs(int argc, char** argv, std::vector<std::string>* positional,
               std::string* error) {
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "-" || !absl::StartsWith(arg, "-")) {
      positional->emplace_back(arg);
      continue;
    }
    arg = absl::StripPrefix(absl::StripPrefix(arg, "-"), "-");
    if (arg == "help" || arg == "h") {
      std::cout << kUsageText;
      std::exit(kOk);
    }
    std::string name(arg.substr(0, arg.find('=')));
    std::optional<std::string> value;
    if (arg.find('=') != absl::string_view::npos) {
      value = std::string(arg.substr(arg.find('=') + 1));
    }
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr) {
      *error = absl::StrCat("unknown flag --", name);
      return false;
    }
    if (!value.has_value()) {
      if (i + 1 >= argc) {
        *error = absl::StrCat("flag --", name, " needs a value");
        return false;
      }
      value = argv[++i];
    }
    std::string parse_error;
    if (!flag->ParseFrom(*value, &parse_error)) {
      *error = absl::StrCat("--", name, "=", *value, ": ", parse_error);
      return false;
    }
  }
  return true;
}

struct Rows {
  std::vector<float> values;
  int64_t rows = 0;
  int64_t cols = 0;
};

absl::Status AddRow(Rows* rows, const std::vector<float>& row, size_t line) {
  if (row.empty()) return absl::OkStatus();
  if (rows->rows > 0 && static_cast<int64_t>(row.size()) != rows->cols) {
    return absl::InvalidArgumentError(absl::StrCat(
        "row ", line, " has ", row.size(), " values; expected ", rows->cols,
        " like the first row"));
  }
  rows->cols = static_cast<int64_t>(row.size());
  rows->values.insert(rows->values.end(), row.begin(), row.end());
  ++rows->rows;
  return absl::OkStatus();
}

absl::StatusOr<Rows> ParseCsv(const std::string& text) {
  Rows rows;
  size_t line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    std::vector<float> row;
    for (absl::string_view cell : absl::StrSplit(line, ',')) {
      float v;
      if (!absl::SimpleAtof(absl::StripAsciiWhitespace(cell), &v)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "CSV line ", line_number, ": \"", cell, "\" is not a number"));
      }
      row.push_back(v);
    }
    if (absl::Status s = AddRow(&rows, row, line_number); !s.ok()) return s;
  }
  return rows;
}

absl::StatusOr<Rows> ParseJson(const std::string& text) {
  nlohmann::json doc = nlohmann::json::parse(text, nullptr, false);
  if (doc.is_discarded()) {
    return absl::InvalidArgumentError("input is not valid JSON");
  }
  if (doc.is_object() && doc.contains("rows")) doc = doc["rows"];
  if (!doc.is_array()) {
    return absl::InvalidArgumentError(
        "JSON input: expected an array of rows or {\"rows\": [...]}");
  }
  Rows rows;
  for (size_t i = 0; i < doc.size(); ++i) {
    if (!doc[i].is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat("JSON row ", i, ": expected an array of numbers"));
    }
    std::vector<float> row;
    for (const auto& v : doc[i]) {
      if (!v.is_number()) {
        return absl::InvalidArgumentError(
            absl::StrCat("JSON row ", i, ": ", v.dump(), " is not a number"));
      }
      row.push_back(v.get<float>());
    }
    if (absl::Status s = AddRow(&rows, row, i); !s.ok()) return s;
  }
  return rows;
}

absl::StatusOr<Rows> ReadRows(const std::string& input) {
  std::string text;
  if (input == "-") {
    std::stringstream buffer;
    buffer << std::cin.rdbuf();
    text = buffer.str();
  } else {
    std::ifstream in(input, std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", input));
    std::stringstream buffer;
    buffer << in.rdbuf();
    text = buffer.str();
  }
  const absl::string_view trimmed = absl::StripLeadingAsciiWhitespace(text);
  const bool json = absl::EndsWith(input, ".json") ||
                    (!trimmed.empty() && (trimmed[0] == '[' || trimmed[0] == '{'));
  absl::StatusOr<Rows> rows = json ? ParseJson(text) : ParseCsv(text);
  if (rows.ok() && rows->rows == 0) {
    return absl::InvalidArgumentError(absl::StrCat(input, ": no rows"));
  }
  return rows;
}

int RunInfer(bitnet::Client& client) {
  const std::string model = absl::GetFlag(FLAGS_model);
  const std::string input = absl::GetFlag(FLAGS_input);
  const int64_t random_rows = absl::GetFlag(FLAGS_random);
  const std::string output = absl::GetFlag(FLAGS_output);
  if (model.empty()) return Usage("infer needs --model");
  if (input.empty() == (random_rows <= 0)) {
    return Usage("infer needs exactly one of --input or --random N (N > 0)");
  }
  if (output != "csv" && output != "json") {
    return Usage("--output: expected csv or json");
  }
  Rows rows;
  if (random_rows > 0) {
    // The row width comes from the model's description.
    auto info = client.GetModel(model, absl::GetFlag(FLAGS_model_version));
    if (!info.ok()) return RpcError(info.status());
    if (info->input_shape_size() != 2) {
      return RpcError(absl::InternalError("GetModel: input_shape is not 2-D"));
    }
    rows.rows = random_rows;
    rows.cols = info->input_shape(1);
    std::mt19937_64 rng(absl::GetFlag(FLAGS_seed));
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    rows.values.resize(static_cast<size_t>(rows.rows * rows.cols));
    for (float& v : rows.values) v = uniform(rng);
  } else {
    auto parsed = ReadRows(input);
    if (!parsed.ok()) return Usage(std::string(parsed.status().message()));
    rows = *std::move(parsed);
  }
  auto result =
      client.Infer(model, rows.values, rows.cols, absl::GetFlag(FLAGS_model_version));
  if (!result.ok()) return RpcError(result.status());
  if (output == "json") {
    nlohmann::json doc;
    doc["model"] = result->model;
    doc["version"] = result->version;
    doc["shape"] = {result->rows, result->cols};
    doc["queue_seconds"] = result->queue_seconds;
    doc["server_seconds"] = result->server_seconds;
    nlohmann::json out = nlohmann::json::array();
    for (int64_t r = 0; r < result->rows; ++r) {
      out.push_back(std::vector<float>(
          result->values.begin() + r * result->cols,
          result->values.begin() + (r + 1) * result->cols));
    }
    doc["outputs"] = std::move(out);
    std::cout << doc.dump() << "\n";
  } else {
    std::string text;
    for (int64_t r = 0; r < result->rows; ++r) {
      for (int64_t c = 0; c < result->cols; ++c) {
        if (c > 0) text.push_back(',');
        // Shortest representation that round-trips the float.
        char buf[32];
        std::snprintf(buf, sizeof(buf), "%.9g", result->values[r * result->cols + c]);
        text.append(buf);
      }
      text.push_back('\n');
    }
    std::cout << text;
  }
  std::cerr << "model=" << result->model << " version=" << result->version
            << " rows=" << result->rows << " server_seconds="
            << result->server_seconds << "\n";
  return kOk;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> positional;
  std::string error;
  if (!ParseArgs(argc, argv, &positional, &error)) return Usage(error);
  if (positional.size() != 1) {
    return Usage(positional.empty() ? "missing command"
                                    : "expected exactly one command");
  }
  const std::string& command = positional[0];
  if (command != "health" && command != "models" && command != "infer") {
    return Usage(absl::StrCat("unknown command \"", command, "\""));
  }

  bitnet::ClientOptions options;
  options.address = absl::GetFlag(FLAGS_address);
  options.timeout = absl::GetFlag(FLAGS_timeout);
  options.tls_ca = absl::GetFlag(FLAGS_tls_ca);
  options.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key = absl::GetFlag(FLAGS_tls_key);
  auto client = bitnet::Client::Create(options);
  if (!client.ok()) return Usage(std::string(client.status().message()));

  if (command == "health") {
    auto status = (*client)->Health(absl::GetFlag(FLAGS_service));
    if (!status.ok()) return RpcError(status.status());
    std::cout << *status << "\n";
    return *status == "SERVING" ? kOk : kRpcError;
  }
  if (command == "models") {
    auto models = (*client)->ListModels();
    if (!models.ok()) return RpcError(models.status());
    std::cout << "name\tlatest_version\tversions\tbackend\tinput_features\t"
                 "output_features\n";
    for (const auto& m : models->models()) {
      std::cout << m.name() << "\t" << m.latest_version() << "\t"
                << absl::StrJoin(m.versions(), ",") << "\t" << m.backend()
                << "\t" << m.input_features() << "\t" << m.output_features()
                << "\n";
    }
    return kOk;
  }
  return RunInfer(**client);
}

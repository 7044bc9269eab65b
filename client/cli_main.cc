// bitnet-cli: command-line client for bitnet-server. See docs/client.md.
//
//   bitnet-cli [--address host:port] [--timeout 30s] COMMAND [flags]
//     health   [--service NAME]
//     models   [--output table|json]
//     infer    --model NAME [--model_version N] (--input FILE|- | --random N)
//              [--dtype fp32|fp16|bf16] [--output csv|json]
//     load     --model NAME --path FILE            (admin)
//     unload   --model NAME [--model_version N]    (admin)
//     stats    [--output table|json]               (admin)
//     finetune --model NAME --data FILE --loss mse|cross_entropy ...  (admin)
//     save     --model NAME --path FILE [--overwrite] ...             (admin)
//
// Exit codes (shell scripts rely on them):
//   0  success (health: SERVING)
//   1  the RPC failed ("bitnet-cli: rpc failed: CODE: message" on stderr),
//      or health answered something other than SERVING
//   2  usage error or bad input file (message on stderr), nothing was sent
//   3  an output file (--loss_csv, --loss_png) could not be written after
//      the RPC succeeded
#include <unistd.h>

#include <algorithm>
#include <cmath>
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
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/chart.h"
#include "client/client.h"
#include "client/data_io.h"
#include "client/flag_args.h"

// Connection.
ABSL_FLAG(std::string, address, "localhost:50051",
          "server host:port (or ip:port,ip:port: round_robin over several)");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(30), "deadline of each call");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA bundle: use TLS and verify the server");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate (mTLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM client key (mTLS)");
ABSL_FLAG(std::string, tls_server_name, "",
          "name the server certificate must carry, if not the address host");
ABSL_FLAG(std::string, admin_token_file, "",
          "file holding the admin bearer token (admin commands)");
ABSL_FLAG(std::string, admin_token, "",
          "the admin bearer token itself (prefer --admin_token_file: "
          "command lines are visible to other users)");
ABSL_FLAG(bool, wait_for_ready, false,
          "wait (up to --timeout) for the server to accept a connection "
          "instead of failing at once when it is not up yet");
ABSL_FLAG(int, retries, 4,
          "attempts of idempotent calls on UNAVAILABLE/RESOURCE_EXHAUSTED "
          "(1 = no retry, at most 5)");
// Commands.
ABSL_FLAG(std::string, service, "", "health: service to check (\"\" = server, or a model name)");
ABSL_FLAG(std::string, model, "", "infer/load/unload/finetune/save: model name");
ABSL_FLAG(uint64_t, model_version, 0, "model version (0 = latest; unload: all)");
ABSL_FLAG(std::string, input, "", "infer: rows from FILE.csv, FILE.json or - (stdin)");
ABSL_FLAG(int64_t, random, 0, "infer: send N random rows instead of --input");
ABSL_FLAG(uint64_t, seed, 1, "infer: seed of --random; finetune: shuffle seed");
ABSL_FLAG(std::string, dtype, "fp32", "infer: wire dtype of the input, fp32, fp16 or bf16");
ABSL_FLAG(std::string, output, "",
          "output format: infer csv (default) or json; models/stats/finetune/"
          "save/load/unload table (default) or json");
ABSL_FLAG(std::string, path, "", "load/save: model file path relative to the "
          "server's --model_repository");
ABSL_FLAG(bool, overwrite, false, "save: replace an existing file");
ABSL_FLAG(bool, include_latents, true, "save: also write the fp32 latent weights");
ABSL_FLAG(std::string, data, "", "finetune: training data (.csv, .json, "
          ".safetensors, or - for CSV/JSON on stdin)");
ABSL_FLAG(std::string, split, "train", "finetune: safetensors tensor prefix "
          "(<split>.x, <split>.labels / <split>.targets)");
ABSL_FLAG(std::string, loss, "", "finetune: mse (targets) or cross_entropy (labels)");
ABSL_FLAG(int64_t, steps, 0, "finetune: optimizer steps (or --epochs)");
ABSL_FLAG(int64_t, epochs, 0, "finetune: passes over the data (or --steps)");
ABSL_FLAG(int64_t, batch_size, 0, "finetune: rows per step (0 = server default 32)");
ABSL_FLAG(std::string, optimizer, "", "finetune: adamw (default) or sgd");
ABSL_FLAG(double, learning_rate, 0, "finetune: learning rate (0 = server default 1e-3)");
ABSL_FLAG(std::optional<double>, momentum, std::nullopt, "finetune: SGD momentum");
ABSL_FLAG(std::optional<double>, weight_decay, std::nullopt, "finetune: weight decay");
ABSL_FLAG(int64_t, report_interval, 0, "finetune: steps between progress reports (0 = 10)");
ABSL_FLAG(bool, shuffle, true, "finetune: shuffle the examples every pass");
ABSL_FLAG(std::string, train_device, "", "finetune: cpu, cuda or \"\" (server's choice)");
ABSL_FLAG(absl::Duration, finetune_timeout, absl::Hours(1),
          "finetune: deadline of the whole fine-tune (upload and training)");
ABSL_FLAG(int64_t, upload_rows, 0,
          "finetune: examples per streamed message (0: about 1 MiB per message)");
ABSL_FLAG(std::string, loss_csv, "", "finetune: write the loss curve as CSV here");
ABSL_FLAG(std::string, loss_png, "", "finetune: draw the loss curve as PNG here");
ABSL_FLAG(bool, progress, false,
          "finetune: progress on stderr even when stderr is not a terminal");

namespace {

constexpr int kOk = 0;
constexpr int kRpcError = 1;
constexpr int kUsage = 2;
constexpr int kOutputError = 3;

constexpr char kUsageText[] =
    "usage: bitnet-cli [--address host:port] [--timeout 30s] COMMAND [flags]\n"
    "commands:\n"
    "  health [--service NAME]          grpc.health.v1 status of the server or a model\n"
    "  models [--output table|json]     list loaded models\n"
    "  infer --model NAME [--model_version N] (--input FILE.csv|FILE.json|- |\n"
    "        --random N [--seed S]) [--dtype fp32|fp16|bf16] [--output csv|json]\n"
    "  load --model NAME --path FILE    load a model file (admin)\n"
    "  unload --model NAME [--model_version N]   unload one or all versions (admin)\n"
    "  stats [--output table|json]      server and per-model counters (admin)\n"
    "  finetune --model NAME --data FILE --loss mse|cross_entropy\n"
    "        (--steps N | --epochs N) [--batch_size B] [--optimizer adamw|sgd]\n"
    "        [--learning_rate LR] [--loss_csv FILE] [--loss_png FILE]   (admin)\n"
    "  save --model NAME --path FILE [--model_version N] [--overwrite]\n"
    "        [--noinclude_latents]       write a version to the repository (admin)\n"
    "flags: --tls_ca, --tls_cert, --tls_key, --tls_server_name for TLS/mTLS;\n"
    "       --admin_token_file FILE for admin commands; --help lists all flags\n"
    "exit codes: 0 ok, 1 RPC error (or health not SERVING), 2 usage or input\n"
    "error, 3 output file not written\n";

int Usage(const std::string& message) {
  if (!message.empty()) std::cerr << "bitnet-cli: " << message << "\n";
  std::cerr << kUsageText;
  return kUsage;
}

// An input problem found before anything was sent: no usage text, it would
// bury the message.
int InputError(const absl::Status& status) {
  std::cerr << "bitnet-cli: " << status.message() << "\n";
  return kUsage;
}

int RpcError(const absl::Status& status) {
  std::cerr << "bitnet-cli: rpc failed: "
            << absl::StatusCodeToString(status.code()) << ": "
            << status.message() << "\n";
  return kRpcError;
}

std::string OutputFormat(absl::string_view default_format,
                         std::initializer_list<absl::string_view> allowed,
                         std::string* error) {
  std::string format = absl::GetFlag(FLAGS_output);
  if (format.empty()) format = std::string(default_format);
  for (absl::string_view a : allowed) {
    if (format == a) return format;
  }
  *error = absl::StrCat("--output=", format, ": expected ", absl::StrJoin(allowed, " or "));
  return "";
}

std::string FormatFloat(float v) {
  // %.9g round-trips every float.
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.9g", v);
  return buf;
}

// ------------------------------------------------------------------ infer

int RunInfer(bitnet::Client& client) {
  const std::string model = absl::GetFlag(FLAGS_model);
  const std::string input = absl::GetFlag(FLAGS_input);
  const int64_t random_rows = absl::GetFlag(FLAGS_random);
  const uint64_t version = absl::GetFlag(FLAGS_model_version);
  std::string error;
  const std::string output = OutputFormat("csv", {"csv", "json"}, &error);
  if (output.empty()) return Usage(error);
  if (model.empty()) return Usage("infer needs --model");
  if (input.empty() == (random_rows <= 0)) {
    return Usage("infer needs exactly one of --input or --random N (N > 0)");
  }
  const std::string dtype_name = absl::AsciiStrToLower(absl::GetFlag(FLAGS_dtype));
  bitnet::v1::DType dtype;
  if (dtype_name == "fp32") {
    dtype = bitnet::v1::DTYPE_FP32;
  } else if (dtype_name == "fp16") {
    dtype = bitnet::v1::DTYPE_FP16;
  } else if (dtype_name == "bf16") {
    dtype = bitnet::v1::DTYPE_BF16;
  } else {
    return Usage(absl::StrCat("--dtype=", dtype_name, ": expected fp32, fp16 or bf16"));
  }
  bitnet::Rows rows;
  if (random_rows > 0) {
    // The row width comes from the model's description.
    auto info = client.GetModel(model, version);
    if (!info.ok()) return RpcError(info.status());
    if (info->input_shape_size() != 2 || info->input_shape(1) <= 0) {
      return RpcError(absl::InternalError("GetModel: input_shape is not [-1, features]"));
    }
    if (random_rows > 1'000'000) {
      return Usage("--random: at most 1000000 rows");
    }
    rows.rows = random_rows;
    rows.cols = info->input_shape(1);
    std::mt19937_64 rng(absl::GetFlag(FLAGS_seed));
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    rows.values.resize(static_cast<size_t>(rows.rows * rows.cols));
    for (float& v : rows.values) v = uniform(rng);
  } else {
    auto parsed = bitnet::ReadRowsFile(input);
    if (!parsed.ok()) return InputError(parsed.status());
    rows = *std::move(parsed);
  }
  auto request = bitnet::MakeInferRequest(model, rows.values, rows.cols, version, dtype);
  if (!request.ok()) return InputError(request.status());
  auto response = client.Infer(*request);
  if (!response.ok()) return RpcError(response.status());
  auto result = bitnet::DecodeInferResponse(*response);
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
        text += FormatFloat(result->values[r * result->cols + c]);
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

// ------------------------------------------------------------------ models, stats

int RunModels(bitnet::Client& client) {
  std::string error;
  const std::string output = OutputFormat("table", {"table", "json"}, &error);
  if (output.empty()) return Usage(error);
  auto models = client.ListModels();
  if (!models.ok()) return RpcError(models.status());
  if (output == "json") {
    nlohmann::json doc = nlohmann::json::array();
    for (const auto& m : models->models()) {
      doc.push_back({{"name", m.name()},
                     {"latest_version", m.latest_version()},
                     {"versions", std::vector<uint64_t>(m.versions().begin(),
                                                        m.versions().end())},
                     {"backend", m.backend()},
                     {"input_features", m.input_features()},
                     {"output_features", m.output_features()}});
    }
    std::cout << nlohmann::json{{"models", doc}}.dump() << "\n";
    return kOk;
  }
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

int RunStats(bitnet::Client& client) {
  std::string error;
  const std::string output = OutputFormat("table", {"table", "json"}, &error);
  if (output.empty()) return Usage(error);
  auto stats = client.GetStats();
  if (!stats.ok()) return RpcError(stats.status());
  if (output == "json") {
    nlohmann::json models = nlohmann::json::array();
    for (const auto& m : stats->models()) {
      models.push_back({{"name", m.name()},
                        {"latest_version", m.latest_version()},
                        {"requests", m.requests()},
                        {"rows", m.rows()},
                        {"batches", m.batches()},
                        {"mean_batch_rows", m.mean_batch_rows()},
                        {"queue_rows", m.queue_rows()},
                        {"backend", m.backend()}});
    }
    std::cout << nlohmann::json{{"server_version", stats->server_version()},
                                {"uptime_seconds", stats->uptime_seconds()},
                                {"draining", stats->draining()},
                                {"models", models}}
                     .dump()
              << "\n";
    return kOk;
  }
  std::cout << "server_version=" << stats->server_version()
            << " uptime_seconds=" << absl::StrFormat("%.1f", stats->uptime_seconds())
            << " draining=" << (stats->draining() ? "true" : "false") << "\n";
  std::cout << "name\tlatest_version\trequests\trows\tbatches\tmean_batch_rows\t"
               "queue_rows\tbackend\n";
  for (const auto& m : stats->models()) {
    std::cout << m.name() << "\t" << m.latest_version() << "\t" << m.requests()
              << "\t" << m.rows() << "\t" << m.batches() << "\t"
              << absl::StrFormat("%.2f", m.mean_batch_rows()) << "\t"
              << m.queue_rows() << "\t" << m.backend() << "\n";
  }
  return kOk;
}

// ------------------------------------------------------------------ load, unload, save

int RunLoad(bitnet::Client& client) {
  const std::string model = absl::GetFlag(FLAGS_model);
  const std::string path = absl::GetFlag(FLAGS_path);
  std::string error;
  const std::string output = OutputFormat("table", {"table", "json"}, &error);
  if (output.empty()) return Usage(error);
  if (model.empty() || path.empty()) return Usage("load needs --model and --path");
  auto loaded = client.LoadModel(model, path);
  if (!loaded.ok()) return RpcError(loaded.status());
  if (output == "json") {
    std::cout << nlohmann::json{{"name", loaded->name()},
                                {"version", loaded->version()},
                                {"backend", loaded->model().backend()}}
                     .dump()
              << "\n";
  } else {
    std::cout << "loaded " << loaded->name() << " version " << loaded->version()
              << " on " << loaded->model().backend() << "\n";
  }
  return kOk;
}

int RunUnload(bitnet::Client& client) {
  const std::string model = absl::GetFlag(FLAGS_model);
  std::string error;
  const std::string output = OutputFormat("table", {"table", "json"}, &error);
  if (output.empty()) return Usage(error);
  if (model.empty()) return Usage("unload needs --model");
  auto unloaded = client.UnloadModel(model, absl::GetFlag(FLAGS_model_version));
  if (!unloaded.ok()) return RpcError(unloaded.status());
  const std::vector<uint64_t> remaining(unloaded->remaining_versions().begin(),
                                        unloaded->remaining_versions().end());
  if (output == "json") {
    std::cout << nlohmann::json{{"name", model}, {"remaining_versions", remaining}}.dump()
              << "\n";
  } else {
    std::cout << "unloaded " << model << "; remaining versions: "
              << (remaining.empty() ? "none" : absl::StrJoin(remaining, ",")) << "\n";
  }
  return kOk;
}

int RunSave(bitnet::Client& client) {
  const std::string model = absl::GetFlag(FLAGS_model);
  const std::string path = absl::GetFlag(FLAGS_path);
  std::string error;
  const std::string output = OutputFormat("table", {"table", "json"}, &error);
  if (output.empty()) return Usage(error);
  if (model.empty() || path.empty()) return Usage("save needs --model and --path");
  bitnet::v1::SaveModelRequest request;
  request.set_name(model);
  request.set_version(absl::GetFlag(FLAGS_model_version));
  request.set_path(path);
  request.set_overwrite(absl::GetFlag(FLAGS_overwrite));
  request.set_include_latents(absl::GetFlag(FLAGS_include_latents));
  auto saved = client.SaveModel(request);
  if (!saved.ok()) return RpcError(saved.status());
  if (output == "json") {
    std::cout << nlohmann::json{{"name", saved->name()},
                                {"version", saved->version()},
                                {"path", saved->path()},
                                {"bytes", saved->bytes()},
                                {"has_latents", saved->has_latents()}}
                     .dump()
              << "\n";
  } else {
    std::cout << "saved " << saved->name() << " version " << saved->version()
              << " to " << saved->path() << " (" << saved->bytes() << " bytes"
              << (saved->has_latents() ? ", with latent weights" : "") << ")\n";
  }
  return kOk;
}

// ------------------------------------------------------------------ finetune

// A one-line progress bar on stderr: redrawn in place on a terminal, one
// line per update otherwise (only with --progress).
class ProgressBar {
 public:
  ProgressBar() : tty_(isatty(STDERR_FILENO) == 1), enabled_(tty_ || absl::GetFlag(FLAGS_progress)) {}
  void Update(absl::string_view label, int64_t done, int64_t total,
              absl::string_view detail) {
    if (!enabled_) return;
    constexpr int kWidth = 30;
    const double fraction =
        total > 0 ? std::clamp(static_cast<double>(done) / total, 0.0, 1.0) : 0.0;
    const int filled = static_cast<int>(fraction * kWidth);
    std::string line = absl::StrFormat(
        "%-9s [%s%s] %3.0f%% %d/%d %s", label, std::string(filled, '#'),
        std::string(kWidth - filled, '.'), fraction * 100, done, total, detail);
    if (tty_) {
      std::cerr << "\r" << line << "\x1b[K" << std::flush;
      dirty_ = true;
    } else {
      std::cerr << line << "\n";
    }
  }
  void Done() {
    if (dirty_) std::cerr << "\n";
    dirty_ = false;
  }
  ~ProgressBar() { Done(); }

 private:
  bool tty_;
  bool enabled_;
  bool dirty_ = false;
};

absl::Status WriteLossCsv(const std::string& path,
                          const std::vector<bitnet::v1::FineTuneProgress>& curve) {
  std::ofstream out(path, std::ios::trunc);
  out << "step,total_steps,epoch,loss,accuracy,examples_per_second,elapsed_seconds\n";
  for (const auto& p : curve) {
    out << p.step() << "," << p.total_steps() << "," << p.epoch() << ","
        << absl::StrFormat("%.9g,%.6g,%.6g,%.6g", p.loss(), p.accuracy(),
                           p.examples_per_second(), p.elapsed_seconds())
        << "\n";
  }
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write --loss_csv ", path));
  return absl::OkStatus();
}

int RunFineTune(bitnet::Client& client) {
  const std::string model = absl::GetFlag(FLAGS_model);
  const std::string data_path = absl::GetFlag(FLAGS_data);
  const std::string loss = absl::GetFlag(FLAGS_loss);
  std::string error;
  const std::string output = OutputFormat("table", {"table", "json"}, &error);
  if (output.empty()) return Usage(error);
  if (model.empty() || data_path.empty() || loss.empty()) {
    return Usage("finetune needs --model, --data and --loss");
  }
  if (loss != "mse" && loss != "cross_entropy") {
    return Usage(absl::StrCat("--loss=", loss, ": expected mse or cross_entropy"));
  }
  if ((absl::GetFlag(FLAGS_steps) > 0) == (absl::GetFlag(FLAGS_epochs) > 0)) {
    return Usage("finetune needs exactly one of --steps N or --epochs N (N > 0)");
  }
  if (absl::GetFlag(FLAGS_upload_rows) < 0) return Usage("--upload_rows: expected >= 0");

  // The model's widths split CSV lines and check every format before upload.
  auto info = client.GetModel(model, absl::GetFlag(FLAGS_model_version));
  if (!info.ok()) return RpcError(info.status());
  if (info->input_shape_size() != 2 || info->output_shape_size() != 2) {
    return RpcError(absl::InternalError("GetModel: shapes are not [-1, features]"));
  }
  bitnet::TrainingFormat format;
  format.loss = loss == "mse" ? bitnet::TrainingLoss::kMse
                              : bitnet::TrainingLoss::kCrossEntropy;
  format.input_features = info->input_shape(1);
  format.output_features = info->output_shape(1);
  format.split = absl::GetFlag(FLAGS_split);
  auto data = bitnet::ReadTrainingFile(data_path, format);
  if (!data.ok()) return InputError(data.status());
  const int64_t examples = data->inputs.rows;

  bitnet::v1::FineTuneConfig config;
  config.set_model(model);
  config.set_base_version(absl::GetFlag(FLAGS_model_version));
  config.set_steps(absl::GetFlag(FLAGS_steps));
  config.set_epochs(absl::GetFlag(FLAGS_epochs));
  config.set_batch_size(absl::GetFlag(FLAGS_batch_size));
  config.set_optimizer(absl::GetFlag(FLAGS_optimizer));
  config.set_learning_rate(static_cast<float>(absl::GetFlag(FLAGS_learning_rate)));
  if (auto m = absl::GetFlag(FLAGS_momentum)) config.set_momentum(static_cast<float>(*m));
  if (auto w = absl::GetFlag(FLAGS_weight_decay)) {
    config.set_weight_decay(static_cast<float>(*w));
  }
  config.set_loss(loss);
  config.set_report_interval(absl::GetFlag(FLAGS_report_interval));
  config.set_shuffle(absl::GetFlag(FLAGS_shuffle));
  config.set_seed(absl::GetFlag(FLAGS_seed));
  config.set_device(absl::GetFlag(FLAGS_train_device));

  // Rows per message: about 1 MiB, so that no message nears the server's
  // message limit and the progress bar moves.
  const int64_t row_bytes =
      4 * (format.input_features +
           (format.loss == bitnet::TrainingLoss::kMse ? format.output_features : 1));
  int64_t chunk = absl::GetFlag(FLAGS_upload_rows);
  if (chunk == 0) chunk = std::max<int64_t>(1, (1 << 20) / row_bytes);

  ProgressBar bar;
  auto stream = client.OpenFineTune(absl::GetFlag(FLAGS_finetune_timeout));
  bool sent_all = true;
  for (int64_t begin = 0; begin < examples; begin += chunk) {
    const int64_t rows = std::min(chunk, examples - begin);
    bitnet::v1::FineTuneRequest message;
    if (begin == 0) *message.mutable_config() = config;
    bitnet::v1::TrainingBatch* batch = message.mutable_batch();
    auto inputs = bitnet::MakeTensor(
        std::span<const float>(data->inputs.values)
            .subspan(static_cast<size_t>(begin * format.input_features),
                     static_cast<size_t>(rows * format.input_features)),
        format.input_features);
    if (!inputs.ok()) return InputError(inputs.status());
    *batch->mutable_inputs() = *std::move(inputs);
    if (format.loss == bitnet::TrainingLoss::kMse) {
      auto targets = bitnet::MakeTensor(
          std::span<const float>(data->targets.values)
              .subspan(static_cast<size_t>(begin * format.output_features),
                       static_cast<size_t>(rows * format.output_features)),
          format.output_features);
      if (!targets.ok()) return InputError(targets.status());
      *batch->mutable_targets() = *std::move(targets);
    } else {
      batch->mutable_labels()->Add(data->labels.begin() + begin,
                                   data->labels.begin() + begin + rows);
    }
    if (!stream->Write(message)) {
      sent_all = false;  // the server ended the stream; Finish() says why
      break;
    }
    bar.Update("upload", begin + rows, examples, "examples");
  }
  if (sent_all) stream->WritesDone();

  std::vector<bitnet::v1::FineTuneProgress> curve;
  std::optional<bitnet::v1::FineTuneResult> result;
  bitnet::v1::FineTuneResponse response;
  while (stream->Read(&response)) {
    if (response.has_progress()) {
      const auto& p = response.progress();
      curve.push_back(p);
      bar.Update("training", p.step(), p.total_steps(),
                 absl::StrFormat("steps loss %.5g%s %.0f ex/s", p.loss(),
                                 loss == "cross_entropy"
                                     ? absl::StrFormat(" acc %.3f", p.accuracy())
                                     : std::string(),
                                 p.examples_per_second()));
    } else if (response.has_result()) {
      result = response.result();
    }
  }
  bar.Done();
  absl::Status status = stream->Finish();
  if (!status.ok()) return RpcError(status);
  if (!result.has_value()) {
    return RpcError(absl::InternalError("FineTune ended OK without a result message"));
  }

  int code = kOk;
  if (const std::string csv = absl::GetFlag(FLAGS_loss_csv); !csv.empty()) {
    if (absl::Status s = WriteLossCsv(csv, curve); !s.ok()) {
      std::cerr << "bitnet-cli: " << s.message() << "\n";
      code = kOutputError;
    }
  }
  if (const std::string png = absl::GetFlag(FLAGS_loss_png); !png.empty()) {
    bitnet::ChartSeries series;
    series.name = "loss";
    for (const auto& p : curve) {
      series.x.push_back(static_cast<double>(p.step()));
      series.y.push_back(p.loss());
    }
    bitnet::ChartOptions chart;
    chart.title = absl::StrCat("fine-tune ", model, " (", loss, ")");
    chart.x_label = "step";
    chart.y_label = "loss";
    if (absl::Status s = bitnet::WriteLineChartPng(png, chart, {series}); !s.ok()) {
      std::cerr << "bitnet-cli: --loss_png: " << s.message() << "\n";
      code = kOutputError;
    }
  }
  if (output == "json") {
    std::cout << nlohmann::json{{"model", result->model()},
                                {"version", result->version()},
                                {"base_version", result->base_version()},
                                {"steps", result->steps()},
                                {"examples", result->examples()},
                                {"final_loss", result->final_loss()},
                                {"final_accuracy", result->final_accuracy()},
                                {"training_seconds", result->training_seconds()},
                                {"device", result->device()},
                                {"resumed", result->resumed()},
                                {"reports", curve.size()}}
                     .dump()
              << "\n";
  } else {
    std::cout << "fine-tuned " << result->model() << " version "
              << result->base_version() << " -> " << result->version() << ": "
              << result->steps() << " steps on " << result->examples()
              << " examples, final loss "
              << absl::StrFormat("%.6g", result->final_loss());
    if (loss == "cross_entropy") {
      std::cout << absl::StrFormat(", accuracy %.4f", result->final_accuracy());
    }
    std::cout << ", " << absl::StrFormat("%.2f", result->training_seconds())
              << " s on " << result->device() << "\n";
  }
  return code;
}

absl::StatusOr<std::string> AdminToken() {
  const std::string file = absl::GetFlag(FLAGS_admin_token_file);
  std::string token = absl::GetFlag(FLAGS_admin_token);
  if (!file.empty()) {
    if (!token.empty()) {
      return absl::InvalidArgumentError(
          "give --admin_token_file or --admin_token, not both");
    }
    std::ifstream in(file);
    if (!in) {
      return absl::InvalidArgumentError(
          absl::StrCat("--admin_token_file: cannot read ", file));
    }
    std::stringstream buffer;
    buffer << in.rdbuf();
    token = std::string(absl::StripAsciiWhitespace(buffer.str()));
    if (token.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--admin_token_file: ", file, " is empty"));
    }
  }
  return token;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> positional;
  std::string error;
  switch (bitnet::ParseFlagArgs(argc, argv, &positional, &error)) {
    case bitnet::FlagParse::kHelp:
      std::cout << kUsageText << "\nall flags:\n" << bitnet::FlagsHelp("client/cli_main.cc");
      return kOk;
    case bitnet::FlagParse::kError:
      return Usage(error);
    case bitnet::FlagParse::kOk:
      break;
  }
  if (positional.size() != 1) {
    return Usage(positional.empty() ? "missing command"
                                    : absl::StrCat("expected exactly one command, got \"",
                                                   absl::StrJoin(positional, " "), "\""));
  }
  const std::string& command = positional[0];
  static const char* const kCommands[] = {"health", "models", "infer",    "load",
                                          "unload", "stats",  "finetune", "save"};
  if (std::find(std::begin(kCommands), std::end(kCommands), command) ==
      std::end(kCommands)) {
    return Usage(absl::StrCat("unknown command \"", command, "\""));
  }

  bitnet::ClientOptions options;
  options.address = absl::GetFlag(FLAGS_address);
  options.timeout = absl::GetFlag(FLAGS_timeout);
  if (options.timeout <= absl::ZeroDuration()) return Usage("--timeout: expected > 0");
  options.wait_for_ready = absl::GetFlag(FLAGS_wait_for_ready);
  options.tls_ca = absl::GetFlag(FLAGS_tls_ca);
  options.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key = absl::GetFlag(FLAGS_tls_key);
  options.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  const int retries = absl::GetFlag(FLAGS_retries);
  if (retries < 1 || retries > 5) return Usage("--retries: expected 1..5");
  options.retry.enabled = retries > 1;
  if (retries > 1) options.retry.max_attempts = retries;
  auto token = AdminToken();
  if (!token.ok()) return Usage(std::string(token.status().message()));
  options.admin_token = *token;
  auto client = bitnet::Client::Create(options);
  if (!client.ok()) return Usage(std::string(client.status().message()));

  if (command == "health") {
    auto status = (*client)->Health(absl::GetFlag(FLAGS_service));
    if (!status.ok()) return RpcError(status.status());
    std::cout << *status << "\n";
    return *status == "SERVING" ? kOk : kRpcError;
  }
  if (command == "models") return RunModels(**client);
  if (command == "infer") return RunInfer(**client);
  if (command == "load") return RunLoad(**client);
  if (command == "unload") return RunUnload(**client);
  if (command == "stats") return RunStats(**client);
  if (command == "finetune") return RunFineTune(**client);
  return RunSave(**client);
}

// bitnet-bench serving: rows/s of a model's batched forward pass, measured
// the way the server runs a batch: CreateBackend(device) -> Load(model, B) ->
// Forward(host input, B rows, host output), wall clock, host copies included.
// It is the denominator of serving efficiency (benchmarks/RESULTS.md):
//   efficiency = end-to-end rows/s (bitnet-load) / forward rows/s at the
//                server's mean batch size.
//
//   bitnet-bench serving [--device=cpu|cuda:0|auto] [--demo_model=small|large]
//       [--model_file=FILE] [--batches=1,2,4,...] [--cpu_threads=N]
//       [--io=plain-f32|batch-f32|batch-f16] [--min_time=1.0] [--json=FILE|-]
//
// --io: where the rows live and their type. plain-f32 (default): ordinary
// host memory, fp32 (Forward; a GPU instance stages through its own pinned
// buffers). batch-f32 / batch-f16: the batcher's buffers, i.e. memory from
// Backend::AllocateHostBuffer (pinned on a GPU: no staging copies), rows and
// output in fp32 / fp16 (ForwardRows), as the server runs fp32 / fp16
// batches.
//
// Per batch size: 3 warm-up forwards, then forwards until --min_time seconds
// and at least 5 runs; the median time of one forward gives rows/s = B /
// median. Inputs are fresh normal(0, 1) values (never zeros).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "server/model/demo_model.h"
#include "server/model/model.h"
#include "server/model/model_file.h"
#include "server/host/element_type.h"
#include "server/host/host_buffer.h"
#include "server/runtime/backend.h"

int RunServingBenchmarks(int argc, char** argv);

namespace {

struct ServingArgs {
  std::string device = "auto";
  std::string demo_model = "small";
  std::string model_file;
  std::vector<int64_t> batches = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
  int cpu_threads = 0;
  double min_time = 1.0;
  std::string io = "plain-f32";
  std::string json;
};

int Usage(const std::string& message) {
  std::fprintf(stderr,
               "bitnet-bench serving: %s\n"
               "usage: bitnet-bench serving [--device=cpu|cuda:0|auto] "
               "[--demo_model=small|large] [--model_file=FILE]\n"
               "       [--batches=1,2,4,...] [--cpu_threads=N] [--min_time=SECONDS] "
               "[--json=FILE|-]\n",
               message.c_str());
  return 2;
}

bool ParseArgs(int argc, char** argv, ServingArgs* args, std::string* error) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) != 0 || eq == std::string::npos) {
      *error = absl::StrCat("expected --name=value, got \"", arg, "\"");
      return false;
    }
    const std::string name = arg.substr(2, eq - 2);
    const std::string value = arg.substr(eq + 1);
    if (name == "device") {
      args->device = value;
    } else if (name == "demo_model") {
      if (value != "small" && value != "large") {
        *error = "--demo_model: expected small or large";
        return false;
      }
      args->demo_model = value;
    } else if (name == "model_file") {
      args->model_file = value;
    } else if (name == "batches") {
      args->batches.clear();
      for (absl::string_view part : absl::StrSplit(value, ',')) {
        int64_t b;
        if (!absl::SimpleAtoi(part, &b) || b < 1 || b > 65536) {
          *error = absl::StrCat("--batches: \"", part, "\" is not a batch size in 1..65536");
          return false;
        }
        args->batches.push_back(b);
      }
    } else if (name == "cpu_threads") {
      if (!absl::SimpleAtoi(value, &args->cpu_threads)) {
        *error = "--cpu_threads: expected an integer";
        return false;
      }
    } else if (name == "min_time") {
      if (!absl::SimpleAtod(value, &args->min_time) || !(args->min_time > 0)) {
        *error = "--min_time: expected seconds > 0";
        return false;
      }
    } else if (name == "io") {
      if (value != "plain-f32" && value != "batch-f32" && value != "batch-f16") {
        *error = "--io: expected plain-f32, batch-f32 or batch-f16";
        return false;
      }
      args->io = value;
    } else if (name == "json") {
      args->json = value;
    } else {
      *error = absl::StrCat("unknown flag --", name);
      return false;
    }
  }
  return true;
}

struct Point {
  int64_t batch = 0;
  int runs = 0;
  double median_seconds = 0;
  double p90_seconds = 0;
  double rows_per_second = 0;
};

}  // namespace

int RunServingBenchmarks(int argc, char** argv) {
  ServingArgs args;
  std::string error;
  if (!ParseArgs(argc, argv, &args, &error)) return Usage(error);

  bitnet::Model model;
  std::string model_name;
  if (!args.model_file.empty()) {
    auto read = bitnet::ReadModelFile(args.model_file);
    if (!read.ok()) {
      std::fprintf(stderr, "bitnet-bench serving: %s\n", read.status().ToString().c_str());
      return 1;
    }
    model = *std::move(read);
    model_name = args.model_file;
  } else {
    model = bitnet::MakeDemoModel(args.demo_model == "large" ? bitnet::DemoModelSize::kLarge
                                                             : bitnet::DemoModelSize::kSmall);
    model_name = absl::StrCat("demo:", args.demo_model);
  }
  bitnet::BackendOptions backend_options;
  backend_options.cpu_threads = args.cpu_threads;
  auto backend = bitnet::CreateBackend(args.device, backend_options);
  if (!backend.ok()) {
    std::fprintf(stderr, "bitnet-bench serving: --device=%s: %s\n", args.device.c_str(),
                 backend.status().ToString().c_str());
    return 1;
  }
  // With --json=- the table goes to stderr, so stdout is pure JSON.
  FILE* table = args.json == "-" ? stderr : stdout;
  const int64_t in = model.input_features();
  const int64_t out = model.output_features();
  std::fprintf(table,
               "# serving forward: model %s (%lld -> %lld), device %s, cpu_threads %d, io %s\n",
               model_name.c_str(), static_cast<long long>(in), static_cast<long long>(out),
               (*backend)->device().c_str(), args.cpu_threads, args.io.c_str());
  const bool batch_io = args.io != "plain-f32";
  const bitnet::ElementType io_type =
      args.io == "batch-f16" ? bitnet::ElementType::kF16 : bitnet::ElementType::kF32;
  std::fprintf(table, "%8s %8s %12s %12s %14s\n", "batch", "runs", "median_ms", "p90_ms",
              "rows_per_s");
  std::vector<Point> points;
  bitnet::DemoRandom rng(20250101);
  for (int64_t batch : args.batches) {
    // Sized for exactly this batch, as the server sizes an instance for
    // max_batch_rows; a larger instance would not change Forward's work.
    auto instance = (*backend)->Load(model, batch);
    if (!instance.ok()) {
      std::fprintf(stderr, "bitnet-bench serving: Load(batch %lld): %s\n",
                   static_cast<long long>(batch), instance.status().ToString().c_str());
      return 1;
    }
    // Several input buffers in rotation, fresh random values.
    constexpr int kInputs = 4;
    std::vector<std::vector<float>> inputs(kInputs, std::vector<float>(batch * in));
    for (auto& x : inputs) {
      for (float& v : x) v = static_cast<float>(rng.NextNormal());
    }
    std::vector<float> y(batch * out);
    // --io=batch-*: the same rows in the backend's batch buffers.
    std::vector<bitnet::HostBuffer> batch_inputs;
    bitnet::HostBuffer batch_output;
    if (batch_io) {
      for (const auto& x : inputs) {
        batch_inputs.push_back((*backend)->AllocateHostBuffer(x.size() * sizeof(float)));
        bitnet::ConvertElements(x.data(), bitnet::ElementType::kF32, batch_inputs.back().data(),
                                io_type, static_cast<int64_t>(x.size()));
      }
      batch_output = (*backend)->AllocateHostBuffer(y.size() * sizeof(float));
    }
    auto forward = [&](int i) {
      if (!batch_io) return (*instance)->Forward(inputs[i % kInputs].data(), batch, y.data());
      bitnet::ForwardArgs a;
      a.rows = batch;
      a.input_features = in;
      a.output_features = out;
      a.input = batch_inputs[i % kInputs].data();
      a.input_dtype = io_type;
      a.input_pinned = batch_inputs[i % kInputs].pinned();
      a.output = batch_output.data();
      a.output_dtype = io_type;
      a.output_pinned = batch_output.pinned();
      return (*instance)->ForwardRows(a);
    };
    for (int i = 0; i < 3; ++i) {
      if (absl::Status s = forward(i); !s.ok()) {
        std::fprintf(stderr, "bitnet-bench serving: Forward: %s\n", s.ToString().c_str());
        return 1;
      }
    }
    std::vector<double> times;
    const auto start = std::chrono::steady_clock::now();
    while (times.size() < 5 ||
           std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() <
               args.min_time) {
      const auto t0 = std::chrono::steady_clock::now();
      absl::Status s = forward(static_cast<int>(times.size()));
      const auto t1 = std::chrono::steady_clock::now();
      if (!s.ok()) {
        std::fprintf(stderr, "bitnet-bench serving: Forward: %s\n", s.ToString().c_str());
        return 1;
      }
      times.push_back(std::chrono::duration<double>(t1 - t0).count());
      if (times.size() >= 100000) break;
    }
    std::sort(times.begin(), times.end());
    Point p;
    p.batch = batch;
    p.runs = static_cast<int>(times.size());
    p.median_seconds = times[times.size() / 2];
    p.p90_seconds = times[std::min(times.size() - 1, times.size() * 9 / 10)];
    p.rows_per_second = batch / p.median_seconds;
    points.push_back(p);
    std::fprintf(table, "%8lld %8d %12.4f %12.4f %14.1f\n", static_cast<long long>(batch), p.runs,
                p.median_seconds * 1e3, p.p90_seconds * 1e3, p.rows_per_second);
    std::fflush(table);
  }
  if (!args.json.empty()) {
    std::ostringstream json;
    json << "{\"model\": \"" << model_name << "\", \"device\": \"" << (*backend)->device()
         << "\", \"input_features\": " << in << ", \"output_features\": " << out
         << ", \"cpu_threads\": " << args.cpu_threads << ", \"io\": \"" << args.io
         << "\", \"points\": [";
    for (size_t i = 0; i < points.size(); ++i) {
      json << (i ? ", " : "")
           << absl::StrFormat(
                  "{\"batch\": %d, \"runs\": %d, \"median_seconds\": %.9g, "
                  "\"p90_seconds\": %.9g, \"rows_per_second\": %.6g}",
                  points[i].batch, points[i].runs, points[i].median_seconds,
                  points[i].p90_seconds, points[i].rows_per_second);
    }
    json << "]}\n";
    if (args.json == "-") {
      std::fputs(json.str().c_str(), stdout);
    } else {
      std::ofstream file(args.json, std::ios::trunc);
      file << json.str();
      if (!file) {
        std::fprintf(stderr, "bitnet-bench serving: cannot write --json=%s\n",
                     args.json.c_str());
        return 3;
      }
    }
  }
  return 0;
}

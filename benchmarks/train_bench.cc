// bitnet-bench train: STE training steps per second of a ternary MLP through
// the Trainer (server/training/trainer.h), on the GPU training backend (and
// optionally the CPU one), with a breakdown of where a step's time goes.
//
//   bitnet-bench train [--device=cuda|cpu|both] [--rows=256] [--in=4096]
//                      [--hidden=11008] [--out=4096] [--act_quant=int8|none]
//                      [--optimizer=adamw|sgd] [--steps=20] [--warmup=3]
//                      [--threads=0]
//
// The model is in -> hidden (ReLU) -> out with biases and per-row scales,
// random latents N(0, 1/fan_in); the loss is MSE against random targets
// (the step's cost does not depend on the loss). Each timed step gets fresh
// random inputs. Reported: median and mean milliseconds per step, steps/s,
// rows/s, and the share of the step spent in the backend's TernaryForward
// and Gemm calls (the rest is host work: optimizer, re-quantization, the
// int8 input copies, activation derivatives). benchmarks/train_bench_torch.py
// runs the same step in PyTorch for comparison.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "kernels/activation.h"
#include "kernels/ternary_format.h"
#include "server/model/demo_model.h"
#include "server/model/model.h"
#include "server/training/cuda_training_backend.h"
#include "server/training/trainer.h"
#include "server/training/training_backend.h"

namespace {

using bitnet::training::GemmArgs;
using bitnet::training::TrainingBackend;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Forwards to a backend and adds up the wall time of each kind of call.
class TimedBackend final : public TrainingBackend {
 public:
  explicit TimedBackend(std::shared_ptr<TrainingBackend> inner)
      : inner_(std::move(inner)) {}
  std::string_view name() const override { return inner_->name(); }
  absl::Status Gemm(const GemmArgs& args) override {
    const auto t0 = Clock::now();
    absl::Status s = inner_->Gemm(args);
    gemm_seconds += Seconds(t0, Clock::now());
    return s;
  }
  absl::Status TernaryForward(const bitnet::TernaryGemmArgs& args) override {
    const auto t0 = Clock::now();
    absl::Status s = inner_->TernaryForward(args);
    forward_seconds += Seconds(t0, Clock::now());
    return s;
  }
  double gemm_seconds = 0.0;
  double forward_seconds = 0.0;

 private:
  std::shared_ptr<TrainingBackend> inner_;
};

struct Flags {
  std::string device = "cuda";
  int64_t rows = 256;
  int64_t in = 4096;
  int64_t hidden = 11008;
  int64_t out = 4096;
  std::string act_quant = "int8";
  std::string optimizer = "adamw";
  int steps = 20;
  int warmup = 3;
  int threads = 0;
};

bool ParseFlag(std::string_view arg, std::string_view name, std::string* out) {
  const std::string prefix = "--" + std::string(name) + "=";
  if (arg.substr(0, prefix.size()) != prefix) return false;
  *out = std::string(arg.substr(prefix.size()));
  return true;
}

bool ParseFlags(int argc, char** argv, Flags* flags) {
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    std::string v;
    auto as_int = [&](int64_t* dst) {
      if (!absl::SimpleAtoi(v, dst) || *dst <= 0) {
        std::fprintf(stderr, "bitnet-bench train: bad value in %s\n", argv[i]);
        return false;
      }
      return true;
    };
    int64_t tmp = 0;
    if (ParseFlag(arg, "device", &flags->device)) continue;
    if (ParseFlag(arg, "act_quant", &flags->act_quant)) continue;
    if (ParseFlag(arg, "optimizer", &flags->optimizer)) continue;
    if (ParseFlag(arg, "rows", &v)) { if (!as_int(&flags->rows)) return false; continue; }
    if (ParseFlag(arg, "in", &v)) { if (!as_int(&flags->in)) return false; continue; }
    if (ParseFlag(arg, "hidden", &v)) { if (!as_int(&flags->hidden)) return false; continue; }
    if (ParseFlag(arg, "out", &v)) { if (!as_int(&flags->out)) return false; continue; }
    if (ParseFlag(arg, "steps", &v)) { if (!as_int(&tmp)) return false; flags->steps = static_cast<int>(tmp); continue; }
    if (ParseFlag(arg, "warmup", &v)) {
      if (!absl::SimpleAtoi(v, &tmp) || tmp < 0) return false;
      flags->warmup = static_cast<int>(tmp);
      continue;
    }
    if (ParseFlag(arg, "threads", &v)) {
      if (!absl::SimpleAtoi(v, &tmp)) return false;
      flags->threads = static_cast<int>(tmp);
      continue;
    }
    std::fprintf(stderr, "bitnet-bench train: unknown option %s\n", argv[i]);
    return false;
  }
  if (flags->device != "cuda" && flags->device != "cpu" && flags->device != "both") {
    std::fprintf(stderr, "bitnet-bench train: --device must be cuda, cpu or both\n");
    return false;
  }
  if (flags->act_quant != "int8" && flags->act_quant != "none") {
    std::fprintf(stderr, "bitnet-bench train: --act_quant must be int8 or none\n");
    return false;
  }
  return true;
}

bitnet::Layer RandomLayer(int64_t in, int64_t out, bitnet::Activation act,
                          bitnet::ActivationQuant quant,
                          bitnet::DemoRandom& rng) {
  bitnet::Layer layer;
  layer.spec = {.in_features = in, .out_features = out, .activation = act,
                .act_quant = quant, .has_bias = true};
  layer.latent.resize(in * out);
  const double stddev = 1.0 / std::sqrt(static_cast<double>(in));
  for (float& w : layer.latent) w = static_cast<float>(rng.NextNormal() * stddev);
  layer.weight = *bitnet::QuantizeAndPack(layer.latent, out, in,
                                          bitnet::ScaleGranularity::kPerRow);
  layer.bias.assign(out, 0.0f);
  return layer;
}

struct Row {
  std::string device;
  double median_ms = 0, mean_ms = 0, forward_share = 0, gemm_share = 0;
  bool ok = false;
  std::string error;
};

Row RunOne(const Flags& flags, const bitnet::Model& model,
           std::shared_ptr<TrainingBackend> inner) {
  Row row;
  row.device = std::string(inner->name());
  auto timed = std::make_shared<TimedBackend>(std::move(inner));
  bitnet::training::TrainerOptions options;
  options.loss = bitnet::training::LossKind::kMeanSquaredError;
  options.optimizer.kind = flags.optimizer == "sgd"
                               ? bitnet::training::OptimizerKind::kSgd
                               : bitnet::training::OptimizerKind::kAdamW;
  options.optimizer.learning_rate = 1e-4f;
  options.backend = timed;
  absl::StatusOr<std::unique_ptr<bitnet::training::Trainer>> trainer =
      bitnet::training::Trainer::Create(model, options);
  if (!trainer.ok()) {
    row.error = std::string(trainer.status().message());
    return row;
  }
  bitnet::DemoRandom rng(99);
  std::vector<float> x(flags.rows * flags.in), t(flags.rows * flags.out);
  std::vector<double> ms;
  double forward = 0, gemm = 0, total = 0;
  for (int s = 0; s < flags.warmup + flags.steps; ++s) {
    for (float& v : x) v = static_cast<float>(rng.NextNormal());
    for (float& v : t) v = static_cast<float>(rng.NextNormal() * 0.1);
    timed->forward_seconds = timed->gemm_seconds = 0;
    const auto t0 = Clock::now();
    absl::StatusOr<bitnet::training::StepResult> r =
        (*trainer)->Step(x, flags.rows, std::span<const float>(t));
    const double seconds = Seconds(t0, Clock::now());
    if (!r.ok()) {
      row.error = std::string(r.status().message());
      return row;
    }
    if (s >= flags.warmup) {
      ms.push_back(seconds * 1e3);
      total += seconds;
      forward += timed->forward_seconds;
      gemm += timed->gemm_seconds;
    }
  }
  std::sort(ms.begin(), ms.end());
  row.median_ms = ms[ms.size() / 2];
  row.mean_ms = total * 1e3 / static_cast<double>(ms.size());
  row.forward_share = forward / total;
  row.gemm_share = gemm / total;
  row.ok = true;
  return row;
}

}  // namespace

int RunTrainBenchmarks(int argc, char** argv) {
  Flags flags;
  if (!ParseFlags(argc, argv, &flags)) return 2;
  const auto quant = flags.act_quant == "int8" ? bitnet::ActivationQuant::kInt8
                                               : bitnet::ActivationQuant::kNone;
  bitnet::DemoRandom rng(1);
  bitnet::Model model;
  model.layers.push_back(RandomLayer(flags.in, flags.hidden,
                                     bitnet::Activation::kRelu, quant, rng));
  model.layers.push_back(RandomLayer(flags.hidden, flags.out,
                                     bitnet::Activation::kIdentity, quant, rng));
  const double params = static_cast<double>(flags.in * flags.hidden +
                                            flags.hidden * flags.out);
  std::printf("bitnet-bench train: %lld -> %lld -> %lld (%.1fM weights), "
              "%lld rows, act_quant %s, %s, MSE, %d timed steps after %d "
              "warm-up\n",
              static_cast<long long>(flags.in),
              static_cast<long long>(flags.hidden),
              static_cast<long long>(flags.out), params / 1e6,
              static_cast<long long>(flags.rows), flags.act_quant.c_str(),
              flags.optimizer.c_str(), flags.steps, flags.warmup);

  std::vector<Row> rows;
  if (flags.device == "cuda" || flags.device == "both") {
    absl::StatusOr<std::unique_ptr<TrainingBackend>> cuda =
        bitnet::training::CreateCudaTrainingBackend();
    if (!cuda.ok()) {
      std::fprintf(stderr, "bitnet-bench train: cuda: %s\n",
                   std::string(cuda.status().message()).c_str());
      if (flags.device == "cuda") return 1;
    } else {
      rows.push_back(RunOne(flags, model, *std::move(cuda)));
    }
  }
  if (flags.device == "cpu" || flags.device == "both") {
    absl::StatusOr<std::unique_ptr<TrainingBackend>> cpu =
        bitnet::training::CreateCpuTrainingBackend({.num_threads = flags.threads});
    rows.push_back(RunOne(flags, model, *std::move(cpu)));
  }
  // GEMM-sized products per step: two forwards, two weight gradients and the
  // second layer's input gradient (the first layer's is not needed).
  const double flops = 2.0 * static_cast<double>(flags.rows) * params * 5.0;
  std::printf("\n| backend | ms/step (median) | ms/step (mean) | steps/s | "
              "rows/s | GFLOP/s (5 products) | TernaryForward | Gemm | "
              "host rest |\n|---|---|---|---|---|---|---|---|---|\n");
  int rc = 0;
  for (const Row& r : rows) {
    if (!r.ok) {
      std::printf("| %s | error: %s | | | | | | | |\n", r.device.c_str(),
                  r.error.c_str());
      rc = 1;
      continue;
    }
    std::printf("| %s | %.2f | %.2f | %.2f | %.0f | %.1f | %.0f%% | %.0f%% | "
                "%.0f%% |\n",
                r.device.c_str(), r.median_ms, r.mean_ms, 1e3 / r.median_ms,
                flags.rows * 1e3 / r.median_ms, flops / (r.median_ms * 1e6),
                100 * r.forward_share, 100 * r.gemm_share,
                100 * (1 - r.forward_share - r.gemm_share));
  }
  return rc;
}

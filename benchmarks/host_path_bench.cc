// bitnet-bench hostpath: host CPU time per row of the per-element work the
// server does for one request between the wire bytes and the response
// bytes, outside gRPC and the device: the data path before and after the
// pinned-batch / fp16 changes (docs/architecture.md "Data path of a
// request"), on one thread.
//
//   bitnet-bench hostpath [--rows=32] [--in=4096] [--out=4096] [--min_time=0.5]
//
// Steps per request (wire dtype fp16, response dtype fp16):
//   before:      scalar fp16 -> fp32 decode into a new vector + finiteness
//                pass; copy into the batch (fp32); GPU instance: copy into
//                pinned staging, copy out of pinned staging into the batch
//                output (fp32); copy the request's rows into its own
//                vector; scalar fp32 -> fp16 encode into the response.
//   after (gpu): finiteness pass on the fp16 bits; copy into the pinned
//                batch (fp16); copy the fp16 answer into the response.
//   after (cpu): finiteness pass; F16C fp16 -> fp32 into the batch; F16C
//                fp32 -> fp16 from the batch output into the response.
// The device's own work (DMA, kernels, CPU forward) is not included.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "server/host/element_type.h"
#include "server/host/half.h"

int RunHostPathBenchmarks(int argc, char** argv);

namespace {

double Time(const std::function<void()>& step, double min_time) {
  step();  // warm-up
  int runs = 0;
  const auto start = std::chrono::steady_clock::now();
  double elapsed = 0;
  do {
    step();
    ++runs;
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  } while (elapsed < min_time || runs < 5);
  return elapsed / runs;
}

}  // namespace

int RunHostPathBenchmarks(int argc, char** argv) {
  int64_t rows = 32, in = 4096, out = 4096;
  double min_time = 0.5;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    const std::string name = eq == std::string::npos ? arg : arg.substr(0, eq);
    const std::string value = eq == std::string::npos ? "" : arg.substr(eq + 1);
    bool ok = true;
    if (name == "--rows") ok = absl::SimpleAtoi(value, &rows) && rows > 0;
    else if (name == "--in") ok = absl::SimpleAtoi(value, &in) && in > 0;
    else if (name == "--out") ok = absl::SimpleAtoi(value, &out) && out > 0;
    else if (name == "--min_time") ok = absl::SimpleAtod(value, &min_time) && min_time > 0;
    else ok = false;
    if (!ok) {
      std::fprintf(stderr,
                   "bitnet-bench hostpath: bad flag \"%s\"\nusage: bitnet-bench hostpath "
                   "[--rows=32] [--in=4096] [--out=4096] [--min_time=0.5]\n",
                   arg.c_str());
      return 2;
    }
  }
  using bitnet::ElementType;
  const int64_t n_in = rows * in, n_out = rows * out;
  // The wire bytes: fp16 of a smooth finite signal.
  std::string wire(static_cast<size_t>(n_in) * 2, '\0');
  for (int64_t i = 0; i < n_in; ++i) {
    const uint16_t h = bitnet::FloatToHalf(std::sin(0.001f * static_cast<float>(i)));
    std::memcpy(wire.data() + 2 * i, &h, 2);
  }
  // A 512-row batch buffer, the request at offset 0; answer values likewise.
  std::vector<float> batch_f32(static_cast<size_t>(n_in) * 16), staging_in(batch_f32.size());
  std::vector<float> batch_out_f32(static_cast<size_t>(n_out) * 16), staging_out(batch_out_f32.size());
  for (int64_t i = 0; i < n_out; ++i) staging_out[i] = std::cos(0.001f * static_cast<float>(i));
  std::vector<uint16_t> batch_f16(batch_f32.size()), batch_out_f16(batch_out_f32.size());
  bitnet::ConvertElements(staging_out.data(), ElementType::kF32, batch_out_f16.data(),
                          ElementType::kF16, n_out);
  std::string response;
  volatile int64_t sink = 0;

  const double before = Time([&] {
    std::vector<float> decoded(static_cast<size_t>(n_in));
    for (int64_t i = 0; i < n_in; ++i) {
      uint16_t bits;
      std::memcpy(&bits, wire.data() + 2 * i, 2);
      decoded[i] = bitnet::HalfToFloat(bits);
    }
    for (int64_t i = 0; i < n_in; ++i) {
      if (!std::isfinite(decoded[i])) sink = sink + i;
    }
    std::memcpy(batch_f32.data(), decoded.data(), n_in * 4);
    std::memcpy(staging_in.data(), batch_f32.data(), n_in * 4);        // -> pinned staging
    std::memcpy(batch_out_f32.data(), staging_out.data(), n_out * 4);  // pinned staging ->
    std::vector<float> own(batch_out_f32.begin(), batch_out_f32.begin() + n_out);
    response.resize(static_cast<size_t>(n_out) * 2);
    for (int64_t i = 0; i < n_out; ++i) {
      const uint16_t bits = bitnet::FloatToHalf(own[i]);
      std::memcpy(response.data() + 2 * i, &bits, 2);
    }
  }, min_time);
  const double after_gpu = Time([&] {
    sink = sink + bitnet::FindNonFinite(wire.data(), ElementType::kF16, n_in);
    bitnet::ConvertElements(wire.data(), ElementType::kF16, batch_f16.data(), ElementType::kF16,
                            n_in);
    response.resize(static_cast<size_t>(n_out) * 2);
    bitnet::ConvertElements(batch_out_f16.data(), ElementType::kF16, response.data(),
                            ElementType::kF16, n_out);
  }, min_time);
  const double after_cpu = Time([&] {
    sink = sink + bitnet::FindNonFinite(wire.data(), ElementType::kF16, n_in);
    bitnet::ConvertElements(wire.data(), ElementType::kF16, batch_f32.data(), ElementType::kF32,
                            n_in);
    response.resize(static_cast<size_t>(n_out) * 2);
    bitnet::ConvertElements(staging_out.data(), ElementType::kF32, response.data(),
                            ElementType::kF16, n_out);
  }, min_time);
  std::printf("# host path per request: %lld rows, %lld -> %lld features, fp16 on the wire, "
              "F16C %s\n",
              static_cast<long long>(rows), static_cast<long long>(in),
              static_cast<long long>(out), bitnet::HostHasF16c() ? "yes" : "no");
  std::printf("%-22s %12s %12s\n", "path", "us/request", "us/row");
  for (const auto& [name, t] : {std::pair<const char*, double>{"before", before},
                                {"after (gpu, fp16)", after_gpu},
                                {"after (cpu, fp32)", after_cpu}}) {
    std::printf("%-22s %12.2f %12.3f\n", name, t * 1e6, t * 1e6 / static_cast<double>(rows));
  }
  return sink == -1 ? 1 : 0;
}

#include <charconv>
#include <string>

#include "absl/strings/str_format.h"
#include "server/runtime/backend.h"
#include "server/runtime/cpu_backend.h"
#include "server/runtime/device_list.h"

#if defined(BITNET_HAVE_CUDA)
#include "kernels/cuda/ternary_cuda.h"
#include "server/runtime/cuda_backend.h"
#endif

namespace bitnet {
namespace {

absl::StatusOr<std::unique_ptr<Backend>> MakeCpu(const BackendOptions& options) {
  absl::StatusOr<std::unique_ptr<CpuBackend>> cpu =
      CpuBackend::Create({.num_threads = options.cpu_threads});
  if (!cpu.ok()) return cpu.status();
  return std::unique_ptr<Backend>(std::move(*cpu));
}

absl::StatusOr<std::unique_ptr<Backend>> MakeCuda(int ordinal) {
#if defined(BITNET_HAVE_CUDA)
  return CreateCudaBackend(ordinal);
#else
  return absl::UnavailableError(absl::StrFormat(
      "device \"cuda:%d\" asked for, but this build has no CUDA backend (no "
      "CUDA toolkit at build time); use device \"cpu\" or \"auto\"",
      ordinal));
#endif
}

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(std::string_view device) {
  return CreateBackend(device, BackendOptions());
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(
    std::string_view device, const BackendOptions& options) {
  if (device == "cpu") return MakeCpu(options);
  if (device == "auto") {
    absl::StatusOr<std::unique_ptr<Backend>> gpu = MakeCuda(0);
    // UNAVAILABLE means "no usable GPU" (or no CUDA in this build): the CPU
    // is the documented fallback. Any other error is a real failure of a
    // GPU that is there, and hiding it behind a slow CPU would mislead.
    if (gpu.ok() || gpu.status().code() != absl::StatusCode::kUnavailable) {
      return gpu;
    }
    return MakeCpu(options);
  }
  if (device.starts_with("cuda:")) {
    const std::string_view digits = device.substr(5);
    int ordinal = -1;
    const char* end = digits.data() + digits.size();
    auto [ptr, ec] = std::from_chars(digits.data(), end, ordinal);
    if (!digits.empty() && ec == std::errc() && ptr == end && ordinal >= 0) {
      return MakeCuda(ordinal);
    }
  }
  return absl::InvalidArgumentError(absl::StrFormat(
      "device must be \"auto\", \"cpu\" or \"cuda:N\" (N a GPU ordinal >= 0), "
      "got \"%s\"",
      device));
}

absl::StatusOr<int> VisibleGpuCount() {
#if defined(BITNET_HAVE_CUDA)
  return CudaDeviceCount();
#else
  return 0;
#endif
}

absl::StatusOr<std::vector<std::shared_ptr<Backend>>> CreateBackends(
    std::string_view devices, const BackendOptions& options) {
  absl::StatusOr<int> visible = VisibleGpuCount();
  if (!visible.ok()) return visible.status();
  absl::StatusOr<std::vector<std::string>> list =
      ParseDeviceList(devices, *visible);
  if (!list.ok()) return list.status();
  std::vector<std::shared_ptr<Backend>> backends;
  for (const std::string& device : *list) {
    absl::StatusOr<std::unique_ptr<Backend>> backend =
        CreateBackend(device, options);
    if (!backend.ok()) {
      return absl::Status(
          backend.status().code(),
          absl::StrFormat("--device=\"%s\": %s: %s", devices, device,
                          backend.status().message()));
    }
    backends.push_back(std::move(*backend));
  }
  return backends;
}

}  // namespace bitnet

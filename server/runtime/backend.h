// Where a model's forward pass runs: the CPU backend (always built) or the
// CUDA backend (built when a CUDA toolkit is found). The batcher and the
// services see only these two interfaces.
#ifndef BITNET_SERVER_RUNTIME_BACKEND_H_
#define BITNET_SERVER_RUNTIME_BACKEND_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/model/model.h"

namespace bitnet {

// One model loaded onto one device: owns its weights (in the backend's
// execution layout) and its scratch buffers.
// Thread-compatible: callers serialize Forward() per instance (the batcher
// runs one batch at a time on an instance).
class ModelInstance {
 public:
  virtual ~ModelInstance() = default;

  // Runs every layer on `rows` rows. `input` is [rows, input_features] fp32 and
  // `output` is [rows, output_features] fp32, both host memory.
  // Errors: INVALID_ARGUMENT if rows > max_rows(); INTERNAL on device failure.
  virtual absl::Status Forward(const float* input, int64_t rows,
                               float* output) = 0;

  // Largest batch this instance was sized for at load time.
  virtual int64_t max_rows() const = 0;
  // "cpu" or "cuda:N".
  virtual std::string device() const = 0;
  // Device memory held by this instance (0 on the CPU).
  virtual int64_t device_memory_bytes() const = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;

  // Copies `model` onto the device, sized for batches of up to `max_rows`.
  virtual absl::StatusOr<std::unique_ptr<ModelInstance>> Load(
      const Model& model, int64_t max_rows) = 0;
  // "cpu" or "cuda:N".
  virtual std::string device() const = 0;
};

// Settings that apply to whichever backend CreateBackend() picks.
struct BackendOptions {
  // Threads of the CPU backend per Forward() (<= 0: all hardware threads).
  int cpu_threads = 0;
};

// `device`: "auto" (the first GPU if one is visible, else the CPU), "cpu" or
// "cuda:N". INVALID_ARGUMENT for anything else; UNAVAILABLE when a GPU was
// asked for and none is usable (or the build has no CUDA).
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(std::string_view device);
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(
    std::string_view device, const BackendOptions& options);

// Number of CUDA devices visible to this process: 0 without a GPU or in a
// build without the CUDA backend. Errors: INTERNAL for other CUDA failures.
absl::StatusOr<int> VisibleGpuCount();

// One backend per model instance for a --device value ("auto", "all", "cpu",
// "cuda:N" or a list such as "cuda:0,cuda:1" or "cpu,cpu"; see
// server/runtime/device_list.h), in list order. Errors: ParseDeviceList's
// (INVALID_ARGUMENT naming the entry, UNAVAILABLE for a GPU that is not
// visible), else the first failing CreateBackend's, prefixed with the entry.
absl::StatusOr<std::vector<std::shared_ptr<Backend>>> CreateBackends(
    std::string_view devices, const BackendOptions& options);

}  // namespace bitnet

#endif  // BITNET_SERVER_RUNTIME_BACKEND_H_

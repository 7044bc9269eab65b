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
#include "server/host/element_type.h"
#include "server/host/host_buffer.h"
#include "server/model/model.h"

namespace bitnet {

// One batch for ModelInstance::ForwardRows: host rows of any element type.
struct ForwardArgs {
  int64_t rows = 0;
  // The model's feature counts (the caller knows them from the Model).
  int64_t input_features = 0;
  int64_t output_features = 0;
  // [rows, input_features] row-major of input_dtype.
  const void* input = nullptr;
  ElementType input_dtype = ElementType::kF32;
  // [rows, output_features] row-major of output_dtype.
  void* output = nullptr;
  ElementType output_dtype = ElementType::kF32;
  // Page-locked memory (Backend::AllocateHostBuffer of a GPU backend): the
  // device copies straight from / into it. Otherwise ordinary memory, which
  // a GPU instance stages through its own pinned buffers.
  bool input_pinned = false;
  bool output_pinned = false;
};

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

  // Forward() for rows of any element type (the batcher's buffers).
  // Numerics: fp16/bf16 input rows are exactly those values (an int8 layer
  // widens them to fp32 first, so results match fp32 input bit for bit; a
  // GPU layer in "none" mode feeds them to its fp16/bf16 tensor cores
  // directly, within the error stated in kernels/cuda/ternary_cuda.h); an
  // fp16/bf16 output is the fp32 result rounded to nearest even, the same
  // bits as converting the fp32 output on the host. The default converts to
  // and from fp32 around Forward() (no copy when both are fp32).
  // Errors: as Forward().
  virtual absl::Status ForwardRows(const ForwardArgs& args);

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

  // Host memory that this backend's instances read and write fastest:
  // page-locked on a GPU (pass ForwardArgs::input_pinned / output_pinned),
  // ordinary on the CPU (the default). Never fails: falls back to ordinary
  // memory. Thread-safe.
  virtual HostBuffer AllocateHostBuffer(size_t bytes);
  // Whether ForwardRows takes fp16/bf16 rows natively (a GPU): batches then
  // keep them, halving host copies and transfers. Otherwise the batcher
  // converts rows to fp32 as they arrive.
  virtual bool native_half_rows() const { return false; }
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

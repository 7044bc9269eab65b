// The CPU backend: always built, the fallback when no GPU is visible.
//
// Load() validates the model, copies every layer once into the CPU execution
// form (the fast CPU kernel's prepared weights), and preallocates two
// activation buffers of [max_rows, widest layer] floats so that Forward()
// allocates nothing. Forward() chains the layers through CpuTernaryGemm with
// bias and activation fused into each layer's epilogue.
//
// Numerics: identical to ReferenceForward (server/model/reference_forward.h)
// in int8 mode (integer accumulation, same float epilogue); in none mode
// within CpuTernaryGemm's documented 1e-5 relative per layer.
#ifndef BITNET_SERVER_RUNTIME_CPU_BACKEND_H_
#define BITNET_SERVER_RUNTIME_CPU_BACKEND_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/model/model.h"
#include "server/runtime/backend.h"

namespace bitnet {

struct CpuBackendOptions {
  // Threads used by one Forward() (<= 0: all hardware threads).
  int num_threads = 0;
};

// Thread-safe: Load() may be called concurrently; each instance it returns is
// independent (own copy of the weights, own buffers).
class CpuBackend final : public Backend {
 public:
  // Errors: none today (the Create form keeps room for checks).
  static absl::StatusOr<std::unique_ptr<CpuBackend>> Create(
      CpuBackendOptions options = {});

  // Errors: INVALID_ARGUMENT if the model fails ValidateModel (message names
  // the layer and tensor) or max_rows <= 0; RESOURCE_EXHAUSTED if the
  // activation buffers cannot be allocated.
  absl::StatusOr<std::unique_ptr<ModelInstance>> Load(const Model& model,
                                                      int64_t max_rows) override;
  std::string device() const override { return "cpu"; }

  const CpuBackendOptions& options() const { return options_; }

 private:
  explicit CpuBackend(CpuBackendOptions options) : options_(options) {}
  CpuBackendOptions options_;
};

}  // namespace bitnet

#endif  // BITNET_SERVER_RUNTIME_CPU_BACKEND_H_

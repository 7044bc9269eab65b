// A CPU backend whose Forward can be held (to keep requests queued or in
// flight), made to fail like a lost device, and counted. Shared by the
// in-process server tests (server_integration_test.cc, fault_test.cc).
#ifndef BITNET_TESTS_GATED_BACKEND_H_
#define BITNET_TESTS_GATED_BACKEND_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/model/model.h"
#include "server/runtime/backend.h"

namespace bitnet::testing {

// What the test controls: whether Forward may proceed (open) or fails
// (fail, as INTERNAL "illegal memory access"), and what it counts.
struct Gate {
  absl::Mutex mu;
  bool open ABSL_GUARDED_BY(mu) = true;
  bool fail ABSL_GUARDED_BY(mu) = false;
  int entered ABSL_GUARDED_BY(mu) = 0;              // Forward calls begun
  int64_t rows_computed ABSL_GUARDED_BY(mu) = 0;  // rows of those that ran

  void Set(bool is_open) {
    absl::MutexLock lock(&mu);
    open = is_open;
  }
  void SetFail(bool is_failing) {
    absl::MutexLock lock(&mu);
    fail = is_failing;
  }
  int Entered() {
    absl::MutexLock lock(&mu);
    return entered;
  }
  int64_t Rows() {
    absl::MutexLock lock(&mu);
    return rows_computed;
  }
};

class GatedInstance final : public ModelInstance {
 public:
  GatedInstance(std::unique_ptr<ModelInstance> inner, std::shared_ptr<Gate> gate)
      : inner_(std::move(inner)), gate_(std::move(gate)) {}
  absl::Status Forward(const float* x, int64_t rows, float* y) override {
    {
      absl::MutexLock lock(&gate_->mu);
      ++gate_->entered;
      gate_->mu.Await(absl::Condition(&gate_->open));
      if (gate_->fail) {
        return absl::InternalError("simulated device failure: illegal memory access");
      }
      gate_->rows_computed += rows;
    }
    return inner_->Forward(x, rows, y);
  }
  int64_t max_rows() const override { return inner_->max_rows(); }
  std::string device() const override { return inner_->device(); }
  int64_t device_memory_bytes() const override { return inner_->device_memory_bytes(); }

 private:
  std::unique_ptr<ModelInstance> inner_;
  std::shared_ptr<Gate> gate_;
};

class GatedBackend final : public Backend {
 public:
  explicit GatedBackend(std::shared_ptr<Gate> gate)
      : inner_(*CreateBackend("cpu")), gate_(std::move(gate)) {}
  absl::StatusOr<std::unique_ptr<ModelInstance>> Load(const Model& model,
                                                      int64_t max_rows) override {
    auto inner = inner_->Load(model, max_rows);
    if (!inner.ok()) return inner.status();
    return std::unique_ptr<ModelInstance>(new GatedInstance(*std::move(inner), gate_));
  }
  std::string device() const override { return inner_->device(); }

 private:
  std::unique_ptr<Backend> inner_;
  std::shared_ptr<Gate> gate_;
};

}  // namespace bitnet::testing

#endif  // BITNET_TESTS_GATED_BACKEND_H_

// Internal to bitnet_kernels_cuda (and its tests/benchmarks): the one macro
// through which every CUDA runtime call goes, turning errors into
// absl::Status. Includes CUDA headers, so it is not part of the public API.
#ifndef BITNET_KERNELS_CUDA_CUDA_STATUS_H_
#define BITNET_KERNELS_CUDA_CUDA_STATUS_H_

#include <cuda_runtime.h>

#include "absl/status/status.h"

namespace bitnet::cuda_internal {

// RESOURCE_EXHAUSTED for allocation failures, UNAVAILABLE for a missing
// device/driver, INVALID_ARGUMENT for bad values, INTERNAL otherwise. The
// message names the call, the CUDA error and where it happened.
absl::Status CudaErrorToStatus(cudaError_t error, const char* call, const char* file, int line);

// Makes `device` current for the guard's lifetime, restoring the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  const absl::Status& status() const { return status_; }

 private:
  int previous_ = -1;
  absl::Status status_;
};

}  // namespace bitnet::cuda_internal

#define BITNET_CUDA_RETURN_IF_ERROR(call)                                                   \
  do {                                                                                      \
    const cudaError_t bitnet_cuda_error_ = (call);                                          \
    if (bitnet_cuda_error_ != cudaSuccess) {                                                \
      return ::bitnet::cuda_internal::CudaErrorToStatus(bitnet_cuda_error_, #call, __FILE__, \
                                                        __LINE__);                          \
    }                                                                                       \
  } while (0)

#endif  // BITNET_KERNELS_CUDA_CUDA_STATUS_H_

#include "benchmarks/gemv_trace_capture.h"

#include <cuda_runtime.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "kernels/cuda/gemv_trace.h"
#include "kernels/cuda/ternary_launch.h"

namespace bitnet::bench {
namespace {

using cuda_internal::kGemvTraceSlots;

// Records for up to 64K warps: the largest gemv grid at N = 11008 has 1840
// warps per batch tile, and M <= 16 is one batch tile.
constexpr size_t kWords = size_t{1} << 20;

}  // namespace

std::unique_ptr<GemvTraceCapture> GemvTraceCapture::FromEnvironment(std::string* error) {
  const char* path = std::getenv("BITNET_GEMV_TRACE");
  if (path == nullptr || *path == '\0') return nullptr;
  const char* mode = std::getenv("BITNET_GEMV_TRACE_MODE");
  int type = static_cast<int>(cuda_internal::MmaType::kS8);
  if (mode != nullptr && std::strcmp(mode, "fp16") == 0) {
    type = static_cast<int>(cuda_internal::MmaType::kF16);
  } else if (mode != nullptr && std::strcmp(mode, "int8") != 0) {
    *error = std::string("BITNET_GEMV_TRACE_MODE must be int8 or fp16, not '") + mode + "'";
    return nullptr;
  }
  unsigned long long* buffer = nullptr;
  cudaError_t e = cudaMalloc(&buffer, kWords * sizeof(*buffer));
  if (e == cudaSuccess) e = cudaMemset(buffer, 0, kWords * sizeof(*buffer));
  if (e == cudaSuccess) e = cuda_internal::SetGemvTrace(buffer, type);
  if (e != cudaSuccess) {
    cudaFree(buffer);
    *error = e == cudaErrorNotSupported
                 ? "BITNET_GEMV_TRACE needs a build configured with -DBITNET_GEMV_TRACE=ON"
                 : std::string("gemv trace setup: ") + cudaGetErrorString(e);
    return nullptr;
  }
  return std::unique_ptr<GemvTraceCapture>(new GemvTraceCapture(path, buffer));
}

GemvTraceCapture::GemvTraceCapture(std::string path, unsigned long long* buffer)
    : path_(std::move(path)), buffer_(buffer) {}

GemvTraceCapture::~GemvTraceCapture() {
  cuda_internal::SetGemvTrace(nullptr, -1);
  cudaFree(buffer_);
}

bool GemvTraceCapture::Write(std::string* error) {
  std::vector<unsigned long long> h(kWords);
  cudaError_t e = cudaDeviceSynchronize();
  if (e == cudaSuccess) {
    e = cudaMemcpy(h.data(), buffer_, kWords * sizeof(h[0]), cudaMemcpyDeviceToHost);
  }
  if (e != cudaSuccess) {
    *error = std::string("gemv trace readback: ") + cudaGetErrorString(e);
    return false;
  }
  FILE* f = std::fopen(path_.c_str(), "w");
  if (f == nullptr) {
    *error = "cannot write " + path_ + ": " + std::strerror(errno);
    return false;
  }
  std::fprintf(f,
               "record,start,weights_issued,prerequisites,x_issued,x_landed,ktile0,ktile1,"
               "ktile2,ktile3,reduced,end,sm\n");
  for (size_t r = 0; r < kWords / kGemvTraceSlots; ++r) {
    const unsigned long long* rec = &h[r * kGemvTraceSlots];
    if (rec[cuda_internal::kTraceStart] == 0) continue;
    std::fprintf(f, "%zu", r);
    for (int s = 0; s < kGemvTraceSlots; ++s) std::fprintf(f, ",%llu", rec[s]);
    std::fprintf(f, "\n");
  }
  const bool ok = std::fclose(f) == 0;
  if (!ok) *error = "cannot write " + path_;
  return ok;
}

}  // namespace bitnet::bench

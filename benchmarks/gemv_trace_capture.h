// The gemv timer trace for `bitnet-bench kernels` (kernels/cuda/gemv_trace.h):
// with BITNET_GEMV_TRACE=FILE in the environment, every gemv launch of the
// mode BITNET_GEMV_TRACE_MODE (int8, the default, or fp16) records its warps'
// timeline, and FILE gets the last launch's records as CSV at the end of the
// run. Needs a build configured with -DBITNET_GEMV_TRACE=ON.
#ifndef BITNET_BENCHMARKS_GEMV_TRACE_CAPTURE_H_
#define BITNET_BENCHMARKS_GEMV_TRACE_CAPTURE_H_

#include <memory>
#include <string>

namespace bitnet::bench {

class GemvTraceCapture {
 public:
  // Null with no BITNET_GEMV_TRACE in the environment; on a setup error
  // (unknown mode, a build without trace points, no device memory) null and
  // `error` says why.
  static std::unique_ptr<GemvTraceCapture> FromEnvironment(std::string* error);
  ~GemvTraceCapture();
  GemvTraceCapture(const GemvTraceCapture&) = delete;
  GemvTraceCapture& operator=(const GemvTraceCapture&) = delete;

  // Waits for the device, writes the records of warps that ran, one line
  // each, and stops tracing. False (with `error`) if the file cannot be written.
  bool Write(std::string* error);

 private:
  GemvTraceCapture(std::string path, unsigned long long* buffer);
  std::string path_;
  unsigned long long* buffer_;  // device memory, kWords words
};

}  // namespace bitnet::bench

#endif  // BITNET_BENCHMARKS_GEMV_TRACE_CAPTURE_H_

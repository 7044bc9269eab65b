// The gemv and ws timer traces for `bitnet-bench kernels`
// (kernels/cuda/gemv_trace.h, kernels/cuda/ws_trace.h): with
// BITNET_GEMV_TRACE=FILE in the environment, every gemv and ws launch of the
// mode BITNET_GEMV_TRACE_MODE (int8, the default, or fp16) records its warps'
// or blocks' timeline, and at the end of the run FILE gets the last gemv
// launch's records as CSV, FILE.ws.csv the last ws launch's (records of an
// earlier launch with more blocks stay too: trace one shape per run). Needs a
// build configured with -DBITNET_GEMV_TRACE=ON.
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

  // Waits for the device and writes the records of the warps and blocks that
  // ran, one line each, to the two files. False (with `error`) if a file
  // cannot be written.
  bool Write(std::string* error);

 private:
  GemvTraceCapture(std::string path, unsigned long long* buffer);
  std::string path_;
  unsigned long long* buffer_;  // device memory: kWords words, gemv records then ws records
};

}  // namespace bitnet::bench

#endif  // BITNET_BENCHMARKS_GEMV_TRACE_CAPTURE_H_

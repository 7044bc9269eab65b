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
#include "kernels/cuda/ws_trace.h"

namespace bitnet::bench {
namespace {

using cuda_internal::kGemvTraceSlots;
using cuda_internal::kWsTraceSlots;

// Gemv records for up to 64K warps: the largest gemv grid at N = 11008 has
// 1840 warps per batch tile, and M <= 16 is one batch tile.
constexpr size_t kGemvWords = size_t{1} << 20;
// The ws records follow in a region of their own, so that each CSV holds
// only its own kernel's records: 4096 blocks (ws_trace.h; N = 11008 in
// 128 x 128 tiles takes 86 blocks per 128 batch rows per split).
constexpr size_t kWsWords = size_t{cuda_internal::kWsTraceRecords} * kWsTraceSlots;
constexpr size_t kWords = kGemvWords + kWsWords;

// The ws CSV's column names: the slots of ws_trace.h, per-k-tile ones
// numbered, unused ones by their index.
std::string WsTraceColumn(int slot) {
  namespace ci = cuda_internal;
  struct Range {
    int first;
    const char* name;
  };
  for (const Range& r : {Range{ci::kWsTraceLoadIssue, "load"}, Range{ci::kWsTraceFull, "full"},
                         Range{ci::kWsTraceTileWaited, "waited"},
                         Range{ci::kWsTraceTileIssued, "issued"}}) {
    if (slot >= r.first && slot < r.first + ci::kWsTraceTiles) {
      return r.name + std::to_string(slot - r.first);
    }
  }
  switch (slot) {
    case ci::kWsTraceStart:
      return "start";
    case ci::kWsTraceSmId:
      return "sm";
    case ci::kWsTracePrerequisites:
      return "prerequisites";
    case ci::kWsTraceLoopDone:
      return "loop_done";
    case ci::kWsTraceSynced:
      return "synced";
    case ci::kWsTraceEnd:
      return "end";
    case ci::kWsTraceGroup1Full:
      return "group1_full";
    case ci::kWsTraceOtherLoopDone:
      return "other_loop_done";
    case ci::kWsTraceReduced:
      return "reduced";
    default:
      return "unused" + std::to_string(slot);
  }
}

// Writes to `path` the header line `header` and the records of `words`
// (`slots` words each) whose first word, the start time in both traces, is
// not 0.
bool WriteRecords(const std::string& path, const std::string& header,
                  const unsigned long long* words, size_t count, int slots, std::string* error) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) {
    *error = "cannot write " + path + ": " + std::strerror(errno);
    return false;
  }
  std::fprintf(f, "%s\n", header.c_str());
  for (size_t r = 0; r < count / slots; ++r) {
    const unsigned long long* rec = &words[r * slots];
    if (rec[0] == 0) continue;
    std::fprintf(f, "%zu", r);
    for (int s = 0; s < slots; ++s) std::fprintf(f, ",%llu", rec[s]);
    std::fprintf(f, "\n");
  }
  const bool ok = std::fclose(f) == 0;
  if (!ok) *error = "cannot write " + path;
  return ok;
}

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
  if (e == cudaSuccess) e = cuda_internal::SetWsTrace(buffer + kGemvWords, type);
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
  cuda_internal::SetWsTrace(nullptr, -1);
  cudaFree(buffer_);
}

bool GemvTraceCapture::Write(std::string* error) {
  std::vector<unsigned long long> h(kWords);
  cudaError_t e = cudaDeviceSynchronize();
  if (e == cudaSuccess) {
    e = cudaMemcpy(h.data(), buffer_, kWords * sizeof(h[0]), cudaMemcpyDeviceToHost);
  }
  if (e != cudaSuccess) {
    *error = std::string("trace readback: ") + cudaGetErrorString(e);
    return false;
  }
  std::string ws_header = "record";
  for (int slot = 0; slot < kWsTraceSlots; ++slot) {
    ws_header += ',';
    ws_header += WsTraceColumn(slot);
  }
  return WriteRecords(path_,
                      "record,start,weights_issued,prerequisites,x_issued,x_landed,ktile0,"
                      "ktile1,ktile2,ktile3,reduced,end,sm",
                      h.data(), kGemvWords, kGemvTraceSlots, error) &&
         WriteRecords(path_ + ".ws.csv", ws_header, h.data() + kGemvWords, kWsWords,
                      kWsTraceSlots, error);
}

}  // namespace bitnet::bench

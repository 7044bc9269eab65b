// Host side of the CUDA kernels: RAII resources, weight upload, the explicit
// configuration list and the dispatcher.
#include "kernels/cuda/ternary_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/ternary_launch.h"
#include "kernels/ternary_format.h"

namespace bitnet {
namespace cuda_internal {

extern const GemmKernelInfo kMmaKernels[];
extern const int kMmaKernelCount;
extern const GemmKernelInfo kWgmmaKernels[];
extern const int kWgmmaKernelCount;
extern const GemmKernelInfo kWgmmaWsKernels[];
extern const int kWgmmaWsKernelCount;

int GemmKernelCount() { return kMmaKernelCount + kWgmmaKernelCount + kWgmmaWsKernelCount; }
const GemmKernelInfo& GemmKernel(int id) {
  if (id < kMmaKernelCount) return kMmaKernels[id];
  id -= kMmaKernelCount;
  if (id < kWgmmaKernelCount) return kWgmmaKernels[id];
  return kWgmmaWsKernels[id - kWgmmaKernelCount];
}

absl::Status CudaErrorToStatus(cudaError_t error, const char* call, const char* file, int line) {
  const std::string message = absl::StrFormat("%s failed: %s (%s) at %s:%d", call,
                                              cudaGetErrorName(error), cudaGetErrorString(error),
                                              file, line);
  // Clear a non-sticky error so that later calls do not report it again.
  (void)cudaGetLastError();
  switch (error) {
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(message);
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
      return absl::UnavailableError(message);
    case cudaErrorInvalidValue:
    case cudaErrorInvalidDevice:
      return absl::InvalidArgumentError(message);
    default:
      return absl::InternalError(message);
  }
}

DeviceGuard::DeviceGuard(int device) {
  cudaError_t e = cudaGetDevice(&previous_);
  if (e == cudaSuccess && previous_ != device) e = cudaSetDevice(device);
  if (e != cudaSuccess) {
    status_ = CudaErrorToStatus(e, "cudaSetDevice", __FILE__, __LINE__);
    previous_ = -1;
  }
}

DeviceGuard::~DeviceGuard() {
  if (previous_ >= 0) {
    int current = -1;
    if (cudaGetDevice(&current) == cudaSuccess && current != previous_) cudaSetDevice(previous_);
  }
}

}  // namespace cuda_internal

using cuda_internal::CudaErrorToStatus;
using cuda_internal::DeviceGuard;
using cuda_internal::GemmKernel;
using cuda_internal::GemmKernelCount;
using cuda_internal::GemmKernelInfo;
using cuda_internal::GemmParams;
using cuda_internal::MmaType;
using cuda_internal::OutType;
using cuda_internal::PrepParams;

#define BITNET_RETURN_IF_ERROR(expr)          \
  do {                                        \
    const absl::Status bitnet_status_ = (expr); \
    if (!bitnet_status_.ok()) return bitnet_status_; \
  } while (0)

std::string_view CudaDTypeName(CudaDType dtype) {
  switch (dtype) {
    case CudaDType::kF32:
      return "f32";
    case CudaDType::kF16:
      return "f16";
    case CudaDType::kBF16:
      return "bf16";
    case CudaDType::kS32:
      return "s32";
  }
  return "unknown";
}

size_t CudaDTypeBytes(CudaDType dtype) {
  switch (dtype) {
    case CudaDType::kF16:
    case CudaDType::kBF16:
      return 2;
    default:
      return 4;
  }
}

absl::StatusOr<int> CudaDeviceCount() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e == cudaSuccess) return count;
  (void)cudaGetLastError();
  // No GPU, no driver, or a driver that cannot start: "no device", not an
  // error, so CPU-only machines and CI skip GPU work.
  if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver ||
      e == cudaErrorInitializationError || e == cudaErrorNotSupported ||
      e == cudaErrorSystemNotReady || e == cudaErrorSystemDriverMismatch ||
      e == cudaErrorCompatNotSupportedOnDevice || e == cudaErrorOperatingSystem) {
    return 0;
  }
  return CudaErrorToStatus(e, "cudaGetDeviceCount", __FILE__, __LINE__);
}

namespace {

absl::Status CheckDevice(int device) {
  absl::StatusOr<int> count = CudaDeviceCount();
  if (!count.ok()) return count.status();
  if (*count == 0) return absl::UnavailableError("no CUDA device is visible");
  if (device < 0 || device >= *count) {
    return absl::InvalidArgumentError(
        absl::StrFormat("device is %d; this machine has CUDA devices 0..%d", device, *count - 1));
  }
  return absl::OkStatus();
}

struct DeviceInfo {
  int sm_major = 0;
  int sms = 0;
  bool wgmma = false;
};

absl::StatusOr<DeviceInfo> GetDeviceInfo(int device) {
  static std::mutex* mu = new std::mutex;
  static auto* cache = new std::map<int, DeviceInfo>;
  std::lock_guard<std::mutex> lock(*mu);
  if (auto it = cache->find(device); it != cache->end()) return it->second;
  BITNET_RETURN_IF_ERROR(CheckDevice(device));
  DeviceGuard guard(device);
  BITNET_RETURN_IF_ERROR(guard.status());
  cudaDeviceProp prop;
  BITNET_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device));
  DeviceInfo info;
  info.sm_major = prop.major;
  info.sms = prop.multiProcessorCount;
  if (prop.major == 9) {
    int has = 0;
    BITNET_CUDA_RETURN_IF_ERROR(cuda_internal::ProbeWgmma(&has, nullptr));
    info.wgmma = has != 0;
  }
  (*cache)[device] = info;
  return info;
}

}  // namespace

absl::StatusOr<std::string> CudaDeviceName(int device) {
  BITNET_RETURN_IF_ERROR(CheckDevice(device));
  cudaDeviceProp prop;
  BITNET_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device));
  return std::string(prop.name);
}

absl::StatusOr<bool> CudaDeviceHasWgmma(int device) {
  absl::StatusOr<DeviceInfo> info = GetDeviceInfo(device);
  if (!info.ok()) return info.status();
  return info->wgmma;
}

// ---------------------------------------------------------------------------
// RAII resources.

absl::StatusOr<CudaBuffer> CudaBuffer::Create(size_t bytes, int device) {
  BITNET_RETURN_IF_ERROR(CheckDevice(device));
  CudaBuffer buffer;
  buffer.device_ = device;
  if (bytes == 0) return buffer;
  DeviceGuard guard(device);
  BITNET_RETURN_IF_ERROR(guard.status());
  BITNET_CUDA_RETURN_IF_ERROR(cudaMalloc(&buffer.data_, bytes));
  buffer.bytes_ = bytes;
  return buffer;
}

CudaBuffer::CudaBuffer(CudaBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)),
      device_(other.device_) {}

CudaBuffer& CudaBuffer::operator=(CudaBuffer&& other) noexcept {
  if (this != &other) {
    CudaBuffer old(std::move(*this));
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    device_ = other.device_;
  }
  return *this;
}

CudaBuffer::~CudaBuffer() {
  if (data_ != nullptr) {
    DeviceGuard guard(device_);
    cudaFree(data_);
  }
}

absl::Status CudaBuffer::CopyFromHost(const void* src, size_t bytes) {
  if (bytes > bytes_) {
    return absl::InvalidArgumentError(
        absl::StrFormat("copy of %d bytes into a %d-byte device buffer", bytes, bytes_));
  }
  if (bytes == 0) return absl::OkStatus();
  DeviceGuard guard(device_);
  BITNET_RETURN_IF_ERROR(guard.status());
  BITNET_CUDA_RETURN_IF_ERROR(cudaMemcpy(data_, src, bytes, cudaMemcpyHostToDevice));
  // From pageable memory cudaMemcpy may return once the bytes are staged,
  // before the DMA into data_ is done, and kernels on non-blocking streams
  // (the backends', the trainer's) do not wait for the default stream's
  // copy: wait for it here, so the buffer is complete when this returns.
  BITNET_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(nullptr));
  return absl::OkStatus();
}

absl::Status CudaBuffer::CopyToHost(void* dst, size_t bytes) const {
  if (bytes > bytes_) {
    return absl::InvalidArgumentError(
        absl::StrFormat("copy of %d bytes out of a %d-byte device buffer", bytes, bytes_));
  }
  if (bytes == 0) return absl::OkStatus();
  DeviceGuard guard(device_);
  BITNET_RETURN_IF_ERROR(guard.status());
  BITNET_CUDA_RETURN_IF_ERROR(cudaMemcpy(dst, data_, bytes, cudaMemcpyDeviceToHost));
  return absl::OkStatus();
}

absl::Status CudaBuffer::Fill(int value, void* stream) {
  if (bytes_ == 0) return absl::OkStatus();
  DeviceGuard guard(device_);
  BITNET_RETURN_IF_ERROR(guard.status());
  auto s = static_cast<cudaStream_t>(stream);
  BITNET_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(data_, value, bytes_, s));
  BITNET_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));
  return absl::OkStatus();
}

absl::StatusOr<CudaHostBuffer> CudaHostBuffer::Create(size_t bytes) {
  CudaHostBuffer buffer;
  if (bytes == 0) return buffer;
  BITNET_CUDA_RETURN_IF_ERROR(cudaHostAlloc(&buffer.data_, bytes, cudaHostAllocDefault));
  buffer.bytes_ = bytes;
  return buffer;
}

CudaHostBuffer::CudaHostBuffer(CudaHostBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

CudaHostBuffer& CudaHostBuffer::operator=(CudaHostBuffer&& other) noexcept {
  if (this != &other) {
    CudaHostBuffer old(std::move(*this));
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

CudaHostBuffer::~CudaHostBuffer() {
  if (data_ != nullptr) cudaFreeHost(data_);
}

absl::StatusOr<CudaStream> CudaStream::Create(int device) {
  BITNET_RETURN_IF_ERROR(CheckDevice(device));
  DeviceGuard guard(device);
  BITNET_RETURN_IF_ERROR(guard.status());
  CudaStream stream;
  cudaStream_t s = nullptr;
  BITNET_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  stream.stream_ = s;
  stream.device_ = device;
  return stream;
}

CudaStream::CudaStream(CudaStream&& other) noexcept
    : stream_(std::exchange(other.stream_, nullptr)), device_(other.device_) {}

CudaStream& CudaStream::operator=(CudaStream&& other) noexcept {
  if (this != &other) {
    CudaStream old(std::move(*this));
    stream_ = std::exchange(other.stream_, nullptr);
    device_ = other.device_;
  }
  return *this;
}

CudaStream::~CudaStream() {
  if (stream_ != nullptr) {
    DeviceGuard guard(device_);
    cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
  }
}

absl::Status CudaStream::Synchronize() const {
  BITNET_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(static_cast<cudaStream_t>(stream_)));
  return absl::OkStatus();
}

absl::StatusOr<CudaEvent> CudaEvent::Create(int device) {
  BITNET_RETURN_IF_ERROR(CheckDevice(device));
  DeviceGuard guard(device);
  BITNET_RETURN_IF_ERROR(guard.status());
  CudaEvent event;
  cudaEvent_t e = nullptr;
  BITNET_CUDA_RETURN_IF_ERROR(cudaEventCreate(&e));
  event.event_ = e;
  return event;
}

CudaEvent::CudaEvent(CudaEvent&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}

CudaEvent& CudaEvent::operator=(CudaEvent&& other) noexcept {
  if (this != &other) {
    CudaEvent old(std::move(*this));
    event_ = std::exchange(other.event_, nullptr);
  }
  return *this;
}

CudaEvent::~CudaEvent() {
  if (event_ != nullptr) cudaEventDestroy(static_cast<cudaEvent_t>(event_));
}

absl::Status CudaEvent::Record(void* stream) {
  BITNET_CUDA_RETURN_IF_ERROR(
      cudaEventRecord(static_cast<cudaEvent_t>(event_), static_cast<cudaStream_t>(stream)));
  return absl::OkStatus();
}

absl::Status CudaEvent::Synchronize() const {
  BITNET_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(static_cast<cudaEvent_t>(event_)));
  return absl::OkStatus();
}

absl::StatusOr<float> CudaEvent::ElapsedMsSince(const CudaEvent& start) const {
  float ms = 0.0f;
  BITNET_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start.event_),
                                                   static_cast<cudaEvent_t>(event_)));
  return ms;
}

absl::Status CudaMemcpyAsync(void* dst, const void* src, size_t bytes, void* stream) {
  if (bytes == 0) return absl::OkStatus();
  BITNET_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, static_cast<cudaStream_t>(stream)));
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Weights.

absl::StatusOr<std::unique_ptr<CudaTernaryWeights>> CudaTernaryWeights::Create(
    const PackedTernaryView& packed, const float* bias, int device, Options options) {
  if (!options.fp_layout && !options.int8_layout) {
    return absl::InvalidArgumentError(
        "CudaTernaryWeights options: at least one of fp_layout and int8_layout must be set");
  }
  if (packed.rows <= 0 || packed.cols <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "weight shape must be positive, got [%d, %d]", packed.rows, packed.cols));
  }
  if (packed.rows > (int64_t{1} << 30) || packed.cols > (int64_t{1} << 24)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "weight shape [%d, %d] is too large (rows <= 2^30, cols <= 2^24)", packed.rows,
        packed.cols));
  }
  if (packed.words == nullptr || packed.scales == nullptr) {
    return absl::InvalidArgumentError("weight words or scales pointer is null");
  }
  BITNET_RETURN_IF_ERROR(ValidatePacked(packed));
  if (bias != nullptr) {
    for (int64_t i = 0; i < packed.rows; ++i) {
      if (!std::isfinite(bias[i])) {
        return absl::InvalidArgumentError(
            absl::StrFormat("bias[%d] is %f; biases must be finite", i, bias[i]));
      }
    }
  }
  BITNET_RETURN_IF_ERROR(CheckDevice(device));

  auto w = std::unique_ptr<CudaTernaryWeights>(new CudaTernaryWeights());
  w->rows_ = packed.rows;
  w->cols_ = packed.cols;
  w->padded_rows_ = (packed.rows + kCudaRowPad - 1) / kCudaRowPad * kCudaRowPad;
  w->k_tiles_ = (packed.cols + kCudaColTile - 1) / kCudaColTile;
  w->device_ = device;

  auto upload = [&](const void* data, size_t bytes) -> absl::StatusOr<CudaBuffer> {
    absl::StatusOr<CudaBuffer> buffer = CudaBuffer::Create(bytes, device);
    if (!buffer.ok()) return buffer.status();
    BITNET_RETURN_IF_ERROR(buffer->CopyFromHost(data, bytes));
    return buffer;
  };
  if (options.fp_layout) {
    const std::vector<uint32_t> words = RepackTernaryForCudaFp(packed);
    absl::StatusOr<CudaBuffer> b = upload(words.data(), words.size() * sizeof(uint32_t));
    if (!b.ok()) return b.status();
    w->fp_codes_ = std::move(*b);
  }
  if (options.int8_layout) {
    const std::vector<uint32_t> words = RepackTernaryForCudaInt8(packed);
    absl::StatusOr<CudaBuffer> b = upload(words.data(), words.size() * sizeof(uint32_t));
    if (!b.ok()) return b.status();
    w->int8_codes_ = std::move(*b);
  }
  std::vector<float> scales(static_cast<size_t>(w->padded_rows_), 0.0f);
  for (int64_t i = 0; i < packed.rows; ++i) scales[i] = packed.ScaleForRow(i);
  {
    absl::StatusOr<CudaBuffer> b = upload(scales.data(), scales.size() * sizeof(float));
    if (!b.ok()) return b.status();
    w->scales_ = std::move(*b);
  }
  if (bias != nullptr) {
    std::vector<float> padded(static_cast<size_t>(w->padded_rows_), 0.0f);
    std::copy(bias, bias + packed.rows, padded.begin());
    absl::StatusOr<CudaBuffer> b = upload(padded.data(), padded.size() * sizeof(float));
    if (!b.ok()) return b.status();
    w->bias_ = std::move(*b);
  }
  return w;
}

bool CudaTernaryWeights::has_layout(ActivationQuant mode) const {
  return mode == ActivationQuant::kInt8 ? int8_codes_.data() != nullptr
                                        : fp_codes_.data() != nullptr;
}

const void* CudaTernaryWeights::codes(ActivationQuant mode) const {
  return mode == ActivationQuant::kInt8 ? int8_codes_.data() : fp_codes_.data();
}

int64_t CudaTernaryWeights::device_bytes() const {
  return static_cast<int64_t>(fp_codes_.bytes() + int8_codes_.bytes() + scales_.bytes() +
                              bias_.bytes());
}

// ---------------------------------------------------------------------------
// Configurations and dispatch.

const std::vector<CudaKernelConfig>& CudaKernelConfigs() {
  static const auto* configs = [] {
    auto* v = new std::vector<CudaKernelConfig>;
    for (int id = 0; id < GemmKernelCount(); ++id) {
      const GemmKernelInfo& k = GemmKernel(id);
      CudaKernelConfig c;
      c.id = id;
      c.name = k.name;
      c.weight_rows = k.weight_rows;
      c.batch_rows = k.batch_rows;
      c.wgmma = k.wgmma;
      c.fp = k.launch[static_cast<int>(MmaType::kF16)] != nullptr &&
             k.launch[static_cast<int>(MmaType::kBF16)] != nullptr;
      c.int8 = k.launch[static_cast<int>(MmaType::kS8)] != nullptr;
      c.split_k = !k.gemv;
      v->push_back(c);
    }
    return v;
  }();
  return *configs;
}

namespace {

int FindConfig(const char* name) {
  for (int id = 0; id < GemmKernelCount(); ++id) {
    if (std::string_view(GemmKernel(id).name) == name) return id;
  }
  return -1;
}

constexpr size_t kAlign = 256;
size_t AlignUp(size_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

MmaType MmaTypeFor(const CudaLinearArgs& args) {
  if (args.act_quant == ActivationQuant::kInt8) return MmaType::kS8;
  return args.x_dtype == CudaDType::kBF16 ? MmaType::kBF16 : MmaType::kF16;
}

bool NeedsPrep(const CudaLinearArgs& args, int64_t x_stride) {
  if (args.act_quant == ActivationQuant::kInt8) return true;
  if (args.x_dtype == CudaDType::kF32) return true;
  // fp16/bf16 are read in place when whole rows are 16-byte chunks.
  return args.weights->cols() % 8 != 0 || x_stride % 8 != 0 ||
         reinterpret_cast<uintptr_t>(args.x) % 16 != 0;
}

// Workspace layout: [counters][partials][prepared activations][row scales].
struct WorkspaceLayout {
  size_t counters = 0;
  size_t partials = 0;
  size_t prep = 0;
  size_t row_scales = 0;
  size_t total = 0;
};

WorkspaceLayout Layout(int64_t m, const GemmKernelInfo& kernel, int64_t tiles, int splits,
                       bool prep, size_t prep_elem_bytes, int64_t padded_k) {
  WorkspaceLayout l;
  // The counters always sit at offset 0 and nothing else ever uses those
  // bytes: when prepared activations shared them (calls without split-K put
  // them at offset 0), a server reusing one workspace across batches had an
  // int8 call of one size leave quantized activations where the next split-K
  // call expected zero counters, and that call summed the wrong partials.
  l.counters = 0;
  size_t off = AlignUp(kCudaSplitKCounterBytes);
  if (splits > 1) {
    l.partials = off;
    off = AlignUp(off + static_cast<size_t>(tiles) * splits * kernel.weight_rows *
                            kernel.batch_rows * sizeof(uint32_t));
  }
  if (prep) {
    l.prep = off;
    off = AlignUp(off + static_cast<size_t>(m) * padded_k * prep_elem_bytes);
    l.row_scales = off;
    off = AlignUp(off + static_cast<size_t>(m) * sizeof(float));
  }
  l.total = off;
  return l;
}

// The ws batch tile for 65..256 rows at N >= 8192, where one 128-row weight
// tile per block leaves 86 of them (N = 11008) for 132 SMs. What a block
// costs hardly depends on how many of its batch rows are real (session 8,
// H100, graph --pdl, N = 11008): a wave of 86 full-K tiles ran fp16 /
// int8 in 22.1 / 20.5 us at 128 columns and 29.1 / 23.1 us at 176; 3 batch
// tiles of 96 (258 tiles, two nearly full waves) ran M = 256 in 38.0 / 33.0 us
// where one wave of 256-column tiles took 41.3 / 35.0 us.
//
// 192-row weight tiles (three consumer warpgroups, ternary_wgmma_ws.cu) make
// 58 tiles at N = 11008, so two batch tiles fit one wave. Session 13 (H100,
// graph --pdl, N = 11008, int8): M = 128 ran 17.95 us with ws_w192_b64 (116
// blocks) against 20.40 us for ws_w128_b128 (86), and M = 256 25.35 us with
// ws_w192_b128 against 33.06 us for ws_w128_b96. Session 14, fp16: M = 256
// 34.1-34.9 us against 38.1-38.5 (that cell had been at cuBLAS's speed); M =
// 128 20.8-22.2 us depending on the machine, against 22.0-22.1. From 129 to
// 176 rows one wave of 86 ws_w128_b176 blocks (~23 us) stays ahead in both
// modes.
//
// Session 24 (H200, graph --pdl, N = 11008, M = 192): in fp16 mode three
// batch tiles of 64 rows (258 blocks) ran 31.75-32.33 us against 33.92-34.03
// for ws_w192_b128, which had made fp16 slower than cuBLAS there (32.3-32.8);
// int8 keeps ws_w192_b128 (22.02 against 23.96). At 224 rows four 64-row
// tiles lose (45.6 against 34.3), so only up to 192.
const char* WideTile(int64_t m, MmaType type) {
  if (m <= 128) return "ws_w192_b64";
  if (m <= 176) return "ws_w128_b176";
  if (m <= 192 && type != MmaType::kS8) return "ws_w128_b64";
  return "ws_w192_b128";
}

// Of the configurations named in `names`, the one whose grid costs the
// fewest waves of blocks times the batch width (one block per SM): a
// block's time grows about with its batch columns and a wave's with its
// slowest block, so a partly empty last wave or a mostly empty last batch
// tile costs as much as full ones. Ties keep the first name listed.
// Session 24 (H200, graph --pdl, `run114.sh`, `run115.sh`), us fp16 / int8,
// automatic before -> this choice:
//   N = 4096 (32 weight tiles), 128 before: M = 320 22.60 / 16.92 -> 96
//   19.53 / 15.83; M = 384 23.19 / 17.01 -> 96 20.00 / 16.20; M = 768
//   45.31 / 32.53 -> 96 39.39 / 30.31 (128 stays at M = 512 and 1024).
//   N = 11008 (86 weight tiles), 176 before: M = 320 59.59 / 38.98 -> 128
//   52.44 / 33.90; M = 384 78.40 / 45.47 -> 128 50.14 / 31.98 (sweep); M =
//   768 123.88 / 77.22 -> 128 100.97 / 63.18 (176 stays at M = 512 and 1024,
//   where session 8 measured it ahead).
int FewestWavesConfig(int64_t m, int64_t n, int sms, std::initializer_list<const char*> names) {
  int best = -1;
  int64_t best_cost = 0;
  for (const char* name : names) {
    const int id = FindConfig(name);
    if (id < 0) continue;
    const GemmKernelInfo& k = GemmKernel(id);
    const int64_t blocks =
        (n + k.weight_rows - 1) / k.weight_rows * ((m + k.batch_rows - 1) / k.batch_rows);
    const int64_t cost = (blocks + sms - 1) / std::max(1, sms) * k.batch_rows;
    if (best < 0 || cost < best_cost) {
      best = id;
      best_cost = cost;
    }
  }
  return best;
}

int AutoConfig(int64_t m, int64_t n, MmaType type, bool wgmma, int sms) {
  // From bitnet-bench kernels --sweep on an H100 (benchmarks/NOTES-kernels.md,
  // K = 4096, N = 4096 and 11008). Small batches stream the weights:
  // one-latency gemv kernels. For 9..16 rows at moderate N, one 16-row tile
  // per SM (16 warps, gemv_w32_b16_16w) decodes each weight once and beat two
  // 8-row tiles (session 16, H100, N = 4096: fp16 5.50-5.71 against 5.95-5.99
  // us, int8 6.15-6.43 against 7.04-7.11); at N = 11008 its 344 blocks need
  // three waves and 48-row blocks stay. Larger batches are tensor-core
  // bound: on Hopper the warp-specialized wgmma tiles from 17 rows (session
  // 22, below), elsewhere mma.sync.
  // 48-row blocks at large N: one wave of two blocks per SM at N = 11008.
  // Session 10 (H100, graph --pdl): up to 8 rows at N = 4096, 16 rows x 16
  // warps (two blocks and 32 warps per SM) beat 32 rows x 8 warps: M = 1
  // 4.10 / 4.60 us (fp16), M = 8 5.27 / 5.72 us; at N = 11008 they lose
  // (10.55 / 8.31 us, 48-row blocks 7.65 us).
  // Session 16 (H100, graph --pdl, N = 4096, three rounds): one 16-warp block
  // of 32 rows per SM (gemv_w32_b8_16w) beat it at M = 8 in both modes (fp16
  // 4.26-4.30 against 4.40-4.43 us, int8 5.48-5.51 against 5.78-5.82) and at
  // M = 1 in int8 mode (4.72-4.78 against 5.09); fp16 M = 1 stays with
  // gemv_w16_b8 (3.92-3.95 against 3.97-3.99).
  // The one-block-per-SM tiles are taken on Hopper only, where they were
  // measured and where 128 KB of shared memory per block always fits (sm_86
  // and sm_89 allow 99 KB; gemv_w32_b16_16w stages 128 KB of fp16 x).
  // Session 23 (H200, graph --pdl): on Hopper the same 16-row tile in 8
  // warps (gemv_w16_b8_8w) ran fp16 M = 1 faster once its blocks cover about
  // every SM: N = 4096 3.53-3.55 us against 3.82, N = 2048 3.24 against 3.55;
  // with fewer blocks than SMs the 16 warps of gemv_w16_b8 hide more latency
  // per SM (N = 1024: 2.43 against 2.60). At N = 11008 48-row blocks stay
  // (6.77 against 9.89), and int8 mode keeps gemv_w32_b8_16w (3.93 against
  // 4.13). Why 8 warps beat 16 is not profiled.
  if (m <= 8 && n >= 8192) return FindConfig("gemv_w48_b8");
  if (m == 1 && type != MmaType::kS8) {
    return FindConfig(wgmma && n >= 2048 ? "gemv_w16_b8_8w" : "gemv_w16_b8");
  }
  if (m <= 8) return FindConfig(wgmma ? "gemv_w32_b8_16w" : "gemv_w16_b8");
  if (m <= 16 && n >= 8192) return FindConfig("gemv_w48_b16");
  if (m <= 16) return FindConfig(wgmma ? "gemv_w32_b16_16w" : "gemv_w32_b8");
  if (!wgmma) {
    if (m <= 64) return FindConfig("mma_w64_b32");
    return FindConfig(m <= 256 ? "mma_w128_b64" : "mma_w128_b128");
  }
  // Hopper (sweep of 2026-11-26, benchmarks/NOTES-kernels.md): the
  // warp-specialized, TMA-fed wgmma kernels (ternary_wgmma_ws.cu) from 64
  // rows in fp16 mode, and from 65 rows in int8 mode (session 7, H100: at
  // N = 4096 ws_w128_b64 ran int8 M = 128 in 21.6 us and M = 256 in 24.9 us
  // against 25.5 and 28.4 us for wgmma_w128_b64, which session 3 had
  // measured faster).
  const bool wide = n >= 8192;
  // Session 8 (H100, graph --pdl timing, RESULTS.md): at N = 4096 the 128 x
  // 32 ws tile ran fp16 M = 32 in 8.1 us against 9.7 us for mma_w64_b32; at
  // N = 11008 (86 weight tiles) the 176-row batch tile beats 128 and 256 from
  // M = 512 on (fp16 M = 512 66.4 / 72.4 / 86.2 us, int8 51.2 / 62.9 / 70.0;
  // M = 2048 int8 200.9 / 229.2 / 210.3): 3 batch tiles of 176 make 258 tiles,
  // two nearly full waves on 132 SMs, where 128-row tiles leave a third wave
  // mostly idle.
  // Session 22 (H200, graph --pdl): from 17 rows both modes take ws tiles,
  // the 32-column batch tile up to 32 rows at any N and up to 128 rows at
  // N = 4096, where its 128 tiles at M = 128 run whole K and ws_w128_b64's 64
  // tiles are split in two and pay for the partial sums. Two rounds at M = 20
  // and 32 (run106.sh): N = 4096 int8 9.28-9.40 us against 10.22-10.52 for
  // mma_w64_b32; N = 11008 fp16 / int8 12.15-12.23 / 10.75-11.13 against
  // 21.1-21.3 / 15.2-15.5 for mma_w64_b32 and 14.9-15.8 / 12.0-12.4 for
  // ws_w128_b64. The sweep at M = 64, 128, 256 (run104.sh): N = 4096, M = 64
  // fp16 / int8 9.43 / 10.47 against 10.45 (ws_w128_b64) / 11.99
  // (mma_w64_b32), M = 128 12.10 / 11.33 against 12.31 / 12.53 (ws_w128_b64);
  // at M = 256 ws_w128_b64 stays (15.26 / 13.60 against 17.6+ for every other
  // tile). At N = 11008, M = 64 ws_w128_b64 (86 tiles) ran int8 in 13.09 us
  // against 19.45 for wgmma_w128_b64 with its split-K of 4 (17.02 without),
  // which sessions before the ws kernels' later gains had measured faster,
  // and ws_w128_b32 ran 19.7.
  // Session 27 (H200, graph --pdl, N = 4096, two calls): for 65..128 rows
  // 128 x 64 tiles split in two and reduced inside a cluster of 2 blocks
  // (ws_w128_b64_cs) ran M = 128 fp16 / int8 in 10.70-10.79 / 10.54-10.79 us
  // against 12.22-12.26 / 11.09-11.14 for ws_w128_b32 (M = 64 stays: 9.85-
  // 10.22 against 9.51 / 10.20). Only where the grid is one wave of clusters
  // and fills at least half the SMs (the measured case: 128 blocks on 132);
  // clusters of 4 fit only 30 at a time on the H200, so the split stays 2.
  if (m > 64 && m <= 128 && !wide) {
    const int64_t blocks = (n + 127) / 128 * ((m + 63) / 64) * 2;
    if (blocks <= sms && 2 * blocks > sms) return FindConfig("ws_w128_b64_cs");
  }
  if (m <= 32 || (m <= 128 && !wide)) return FindConfig("ws_w128_b32");
  if (m <= 64) return FindConfig("ws_w128_b64");
  // At N >= 8192 partly the 192-row tiles: WideTile.
  if (m <= 256) return FindConfig(wide ? WideTile(m, type) : "ws_w128_b64");
  if (m <= 1024) {
    return wide ? FewestWavesConfig(m, n, sms, {"ws_w128_b176", "ws_w128_b128"})
                : FewestWavesConfig(m, n, sms, {"ws_w128_b128", "ws_w128_b96"});
  }
  // Session 13 (H100, graph --pdl, int8): at N = 11008, M = 2048 the 192 x 176
  // tiles (696 blocks) ran 188.1 us against 195.8 us for 128 x 176 (1032).
  if (wide) return FindConfig(type == MmaType::kS8 ? "ws_w192_b176" : "ws_w128_b176");
  // Session 13 (H100, graph --pdl, N = 4096, M = 2048 int8): 192 x 176 tiles
  // (22 x 12 = 264 blocks, exactly two waves on 132 SMs) ran 70.7-71.3 us
  // against 75.95 us for 128 x 256 tiles (256 blocks).
  return FindConfig(type == MmaType::kS8 ? "ws_w192_b176" : "ws_w128_b256");
}

struct ShapeCheck {
  int64_t x_stride = 0;
  int64_t y_stride = 0;
};

absl::StatusOr<ShapeCheck> CheckArgs(const CudaLinearArgs& args) {
  if (args.weights == nullptr) return absl::InvalidArgumentError("weights is null");
  const CudaTernaryWeights& w = *args.weights;
  if (args.m < 0) {
    return absl::InvalidArgumentError(absl::StrFormat("m (batch rows) is %d, must be >= 0", args.m));
  }
  if (args.m > (int64_t{1} << 24)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("m (batch rows) is %d; at most %d per call", args.m, int64_t{1} << 24));
  }
  if (args.act_quant != ActivationQuant::kNone && args.act_quant != ActivationQuant::kInt8) {
    return absl::InvalidArgumentError("act_quant is not a known value");
  }
  switch (args.activation) {
    case Activation::kIdentity:
    case Activation::kRelu:
    case Activation::kGelu:
    case Activation::kSilu:
      break;
    default:
      return absl::InvalidArgumentError("activation is not a known value");
  }
  if (args.x_dtype != CudaDType::kF32 && args.x_dtype != CudaDType::kF16 &&
      args.x_dtype != CudaDType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat(
        "x_dtype is ", std::string(CudaDTypeName(args.x_dtype)), "; expected f32, f16 or bf16"));
  }
  if (args.y_dtype != CudaDType::kF32 && args.y_dtype != CudaDType::kF16 &&
      args.y_dtype != CudaDType::kBF16 && args.y_dtype != CudaDType::kS32) {
    return absl::InvalidArgumentError("y_dtype is not a known value");
  }
  if (args.y_dtype == CudaDType::kS32 && args.act_quant != ActivationQuant::kInt8) {
    return absl::InvalidArgumentError(
        "y_dtype s32 (raw int32 accumulators) requires act_quant int8");
  }
  if (!w.has_layout(args.act_quant)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "weights were created without the execution layout for act_quant ",
        std::string(ActivationQuantName(args.act_quant)), " (CudaTernaryWeights::Options)"));
  }
  ShapeCheck s;
  s.x_stride = args.x_stride == 0 ? w.cols() : args.x_stride;
  s.y_stride = args.y_stride == 0 ? w.rows() : args.y_stride;
  if (s.x_stride < w.cols()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "x_stride is %d; must be >= weights->cols() = %d", s.x_stride, w.cols()));
  }
  if (s.y_stride < w.rows()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "y_stride is %d; must be >= weights->rows() = %d", s.y_stride, w.rows()));
  }
  if (args.m > 0 && args.x == nullptr) {
    return absl::InvalidArgumentError(absl::StrFormat("x is null but m = %d", args.m));
  }
  if (args.m > 0 && args.y == nullptr) {
    return absl::InvalidArgumentError(absl::StrFormat("y is null but m = %d", args.m));
  }
  if (args.config != kCudaAutoConfig && (args.config < 0 || args.config >= GemmKernelCount())) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "config is %d; valid ids are 0..%d (CudaKernelConfigs()) or kCudaAutoConfig",
        args.config, GemmKernelCount() - 1));
  }
  if (args.split_k < 0 || args.split_k > w.k_tiles()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "split_k is %d; must be 0 (auto) or 1..%d (K / 128 rounded up)", args.split_k,
        w.k_tiles()));
  }
  return s;
}

}  // namespace

absl::StatusOr<CudaLaunchPlan> CudaPlanLinear(const CudaLinearArgs& args, int device_sm_major,
                                              int device_sms, bool device_has_wgmma) {
  absl::StatusOr<ShapeCheck> shape = CheckArgs(args);
  if (!shape.ok()) return shape.status();
  const CudaTernaryWeights& w = *args.weights;
  if (device_sm_major < 8) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "CUDA kernels need compute capability 8.0 or newer; the device has %d.x",
        device_sm_major));
  }
  CudaLaunchPlan plan;
  const MmaType type = MmaTypeFor(args);
  plan.config = args.config == kCudaAutoConfig
                    ? AutoConfig(args.m, w.rows(), type, device_has_wgmma, device_sms)
                    : args.config;
  const GemmKernelInfo& kernel = GemmKernel(plan.config);
  if (kernel.wgmma && !device_has_wgmma) {
    return absl::FailedPreconditionError(absl::StrCat(
        "configuration ", kernel.name,
        " needs sm_90a (Hopper) code, which this device or build does not run"));
  }
  if (kernel.launch[static_cast<int>(type)] == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "configuration ", kernel.name, " is not compiled for act_quant ",
        std::string(ActivationQuantName(args.act_quant)), " (see CudaKernelConfigs())"));
  }
  if (kernel.gemv && args.split_k > 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "split_k is %d but configuration %s splits K inside the block; use 0 or 1",
        args.split_k, kernel.name));
  }
  const int64_t tiles_n = (w.rows() + kernel.weight_rows - 1) / kernel.weight_rows;
  const int64_t tiles_m = std::max<int64_t>(1, (args.m + kernel.batch_rows - 1) / kernel.batch_rows);
  if (tiles_m > 65535) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "m = %d needs %d batch tiles of %d rows with configuration %s; at most 65535", args.m,
        tiles_m, kernel.batch_rows, kernel.name));
  }
  const int64_t tiles = tiles_n * tiles_m;
  int splits = kernel.gemv ? 1 : args.split_k;
  if (splits == 0) {
    // Split K only when the output tiles leave SMs idle (splitting a full
    // grid measured slower: partial sums cost more than they balance), then
    // aim at ~2 blocks per SM, each split keeping at least 2 k-tiles.
    const int64_t max_splits = std::max<int64_t>(1, std::min<int64_t>(8, w.k_tiles() / 2));
    if (kernel.blocks_per_sm <= 1) {
      // Blocks that need a whole SM (warp-specialized wgmma): their split-K
      // partial sums cost more than a partly idle wave (sweep: 86 tiles on
      // 132 SMs ran 45 us unsplit, 58-60 us with 2-3 splits), so split only
      // grids that leave at least half of the SMs idle.
      // A cluster-reduced split (kernel.cluster_split) takes at most 2: the
      // H200 holds only 30 clusters of 4 one-SM blocks at once (session 26).
      const int64_t most = std::min<int64_t>(kernel.cluster_split ? 2 : 4, max_splits);
      splits = tiles * 2 <= device_sms
                   ? static_cast<int>(std::clamp<int64_t>(device_sms / tiles, 1, most))
                   : 1;
    } else if (tiles >= device_sms) {
      splits = 1;
    } else {
      splits = static_cast<int>(
          std::clamp<int64_t>((2 * device_sms + tiles - 1) / tiles, 1, max_splits));
    }
  }
  if (kernel.cluster_split && splits > 8) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "split_k is %d but configuration %s reduces split-K inside a thread-block cluster of "
        "at most 8 blocks; use 0 (auto) or 1..8",
        splits, kernel.name));
  }
  constexpr int64_t kMaxSplitTiles = static_cast<int64_t>(kCudaSplitKCounterBytes / sizeof(int));
  if (splits > 1 && tiles > kMaxSplitTiles) {
    if (args.split_k > 1) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "split_k is %d but configuration %s has %d output tiles for m = %d; split-K needs "
          "at most %d tiles (use split_k 0 or 1, or a larger tile)",
          args.split_k, kernel.name, tiles, args.m, kMaxSplitTiles));
    }
    splits = 1;
  }
  // No empty splits.
  const int64_t kt_per_split = (w.k_tiles() + splits - 1) / splits;
  splits = static_cast<int>((w.k_tiles() + kt_per_split - 1) / kt_per_split);
  plan.split_k = splits;
  plan.prepare_activations = NeedsPrep(args, shape->x_stride);
  // griddepcontrol exists from sm_90 on; older devices launch plainly.
  plan.overlap_previous_kernel = args.overlap_previous_kernel && device_sm_major >= 9;
  const size_t prep_elem = type == MmaType::kS8 ? 1 : 2;
  plan.workspace_bytes = Layout(args.m, kernel, tiles, splits, plan.prepare_activations,
                                prep_elem, w.k_tiles() * kCudaColTile)
                             .total;
  return plan;
}

absl::StatusOr<CudaLaunchPlan> CudaPlanLinear(const CudaLinearArgs& args) {
  if (args.weights == nullptr) return absl::InvalidArgumentError("weights is null");
  absl::StatusOr<DeviceInfo> info = GetDeviceInfo(args.weights->device());
  if (!info.ok()) return info.status();
  return CudaPlanLinear(args, info->sm_major, info->sms, info->wgmma);
}

absl::StatusOr<size_t> CudaLinearWorkspaceBytes(const CudaLinearArgs& args) {
  absl::StatusOr<CudaLaunchPlan> plan = CudaPlanLinear(args);
  if (!plan.ok()) return plan.status();
  return plan->workspace_bytes;
}

absl::Status CudaTernaryLinear(const CudaLinearArgs& args, void* stream) {
  absl::StatusOr<CudaLaunchPlan> plan = CudaPlanLinear(args);
  if (!plan.ok()) return plan.status();
  if (args.m == 0) return absl::OkStatus();
  if (args.workspace_bytes < plan->workspace_bytes ||
      (plan->workspace_bytes > 0 && args.workspace == nullptr)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "workspace is %d bytes; this call needs %d (CudaLinearWorkspaceBytes)",
        args.workspace_bytes, plan->workspace_bytes));
  }
  const CudaTernaryWeights& w = *args.weights;
  const GemmKernelInfo& kernel = GemmKernel(plan->config);
  const MmaType type = MmaTypeFor(args);
  const int64_t x_stride = args.x_stride == 0 ? w.cols() : args.x_stride;
  const int64_t y_stride = args.y_stride == 0 ? w.rows() : args.y_stride;
  const int64_t padded_k = w.k_tiles() * kCudaColTile;
  const int64_t tiles_n = (w.rows() + kernel.weight_rows - 1) / kernel.weight_rows;
  const int64_t tiles_m = (args.m + kernel.batch_rows - 1) / kernel.batch_rows;
  const WorkspaceLayout layout =
      Layout(args.m, kernel, tiles_n * tiles_m, plan->split_k, plan->prepare_activations,
             type == MmaType::kS8 ? 1 : 2, padded_k);

  DeviceGuard guard(w.device());
  BITNET_RETURN_IF_ERROR(guard.status());
  auto s = static_cast<cudaStream_t>(stream);
  char* ws = static_cast<char*>(args.workspace);

  GemmParams p;
  p.m = static_cast<int>(args.m);
  p.n = static_cast<int>(w.rows());
  p.k_tiles = static_cast<int>(w.k_tiles());
  p.kt_per_split = static_cast<int>((w.k_tiles() + plan->split_k - 1) / plan->split_k);
  p.splits = plan->split_k;
  p.w = static_cast<const uint4*>(w.codes(args.act_quant));
  p.w_rows = w.padded_rows();
  p.w_scale = w.scales();
  p.bias = w.bias();
  p.act = static_cast<cuda_internal::Act>(static_cast<int>(args.activation));
  p.y = args.y;
  p.ldy = y_stride;
  p.y_type = static_cast<OutType>(static_cast<int>(args.y_dtype));
  // Only kernels that wait for the previous grid before reading x may start
  // early (ternary_launch.h, GemmParams::pdl).
  p.pdl = plan->overlap_previous_kernel && kernel.overlaps_previous;
  if (plan->split_k > 1) {
    p.counters = reinterpret_cast<int*>(ws + layout.counters);
    p.partials = reinterpret_cast<uint32_t*>(ws + layout.partials);
  }
  if (plan->prepare_activations) {
    PrepParams prep;
    prep.m = p.m;
    prep.k = static_cast<int>(w.cols());
    prep.x = args.x;
    prep.ldx = x_stride;
    prep.x_type = static_cast<int>(args.x_dtype);
    prep.out_type = static_cast<int>(type);
    prep.out = ws + layout.prep;
    prep.ldo = padded_k;
    prep.prescale = type != MmaType::kS8 && args.x_dtype == CudaDType::kF32;
    prep.row_scale = (type == MmaType::kS8 || prep.prescale)
                         ? reinterpret_cast<float*>(ws + layout.row_scales)
                         : nullptr;
    prep.pdl = plan->overlap_previous_kernel;
    BITNET_CUDA_RETURN_IF_ERROR(cuda_internal::LaunchPrep(prep, s));
    p.x = prep.out;
    p.ldx = padded_k;
    p.x_k_limit = padded_k;
    p.row_scale = prep.row_scale;
  } else {
    p.x = args.x;
    p.ldx = x_stride;
    p.x_k_limit = w.cols();
    p.row_scale = nullptr;
  }
  const dim3 grid(static_cast<unsigned>(tiles_n), static_cast<unsigned>(tiles_m),
                  static_cast<unsigned>(plan->split_k));
  BITNET_CUDA_RETURN_IF_ERROR(kernel.launch[static_cast<int>(type)](p, grid, s));
  return absl::OkStatus();
}

}  // namespace bitnet

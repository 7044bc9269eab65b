// CUDA ternary linear layers: y = act(x @ W^T * scale + bias) for a packed
// ternary W, the same function as kernels/ternary_gemm.h's TernaryGemmArgs
// (ReferenceTernaryGemm is the oracle), on device memory.
//
// Plain C++: includable without CUDA headers. Streams are passed as
// `void*` (a cudaStream_t; nullptr = the legacy default stream).
//
// Every CUDA error becomes an absl::Status (nothing aborts or prints):
//   INVALID_ARGUMENT    bad shapes, pointers, dtypes, workspace too small,
//                       a forced configuration that does not exist
//   FAILED_PRECONDITION a configuration that exists but is not compiled for,
//                       or cannot run on, this device (e.g. wgmma off sm_90a)
//   RESOURCE_EXHAUSTED  device or pinned memory allocation failed
//   UNAVAILABLE         no CUDA device / driver
//   INTERNAL            any other CUDA error (launch failure, ...)
//
// Numerics (ARCHITECTURE.md):
//   act_quant none: activations stay fp16 (fp16 input), bf16 (bf16 input) or
//     are converted to fp16 with an exact per-row power-of-two prescale (fp32
//     input, so no overflow); products with ternary weights are exact and
//     accumulate in fp32 on the tensor cores. ||y - ref|| / ||ref|| ~ 1e-4.
//   act_quant int8: per row s = 127.0f / fmaxf(absmax, 1e-5f) (IEEE
//     division), xq = clamp(rint(x * s), -128, 127), int32 accumulation, then
//     Int8Dequantize (activation.h) in the same float order as the CPU: the
//     int32 accumulators and y are bit-identical to ReferenceTernaryGemm for
//     fp32 input (fp16/bf16 inputs are first widened exactly to float).
#ifndef BITNET_KERNELS_CUDA_TERNARY_CUDA_H_
#define BITNET_KERNELS_CUDA_TERNARY_CUDA_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/activation.h"
#include "kernels/ternary_format.h"

namespace bitnet {

// Element types of activations in device memory. kS32 is an output type only:
// the raw int32 accumulators of int8 mode (no scale, bias or activation),
// which tests compare bit for bit with ReferenceInt8Accumulators.
enum class CudaDType { kF32, kF16, kBF16, kS32 };
std::string_view CudaDTypeName(CudaDType dtype);  // "f32", "f16", "bf16", "s32"
size_t CudaDTypeBytes(CudaDType dtype);

// Number of visible CUDA devices. 0 (not an error) when there is no GPU or no
// driver, so CPU-only machines and CI simply skip GPU work.
// Errors: INTERNAL for any other CUDA failure.
absl::StatusOr<int> CudaDeviceCount();

// "NVIDIA H100 80GB HBM3" etc. Errors: INVALID_ARGUMENT (no such device).
absl::StatusOr<std::string> CudaDeviceName(int device);

// ---------------------------------------------------------------------------
// RAII resources. Each object is movable, not copyable, and frees its resource
// on destruction (errors on free are ignored: nothing can be done then).

// Device memory on one device.
class CudaBuffer {
 public:
  // `bytes` may be 0 (data() is then nullptr). Errors: INVALID_ARGUMENT (bad
  // device), RESOURCE_EXHAUSTED (cudaMalloc failed).
  static absl::StatusOr<CudaBuffer> Create(size_t bytes, int device);

  CudaBuffer() = default;
  CudaBuffer(CudaBuffer&& other) noexcept;
  CudaBuffer& operator=(CudaBuffer&& other) noexcept;
  CudaBuffer(const CudaBuffer&) = delete;
  CudaBuffer& operator=(const CudaBuffer&) = delete;
  ~CudaBuffer();

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  int device() const { return device_; }

  // Synchronous copies of `bytes` (<= bytes()) at offset 0.
  absl::Status CopyFromHost(const void* src, size_t bytes);
  absl::Status CopyToHost(void* dst, size_t bytes) const;
  // Sets every byte to `value` (stream-ordered on `stream`, then synchronized).
  absl::Status Fill(int value, void* stream = nullptr);

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  int device_ = 0;
};

// Page-locked host memory (cudaHostAlloc), for asynchronous copies.
class CudaHostBuffer {
 public:
  static absl::StatusOr<CudaHostBuffer> Create(size_t bytes);
  CudaHostBuffer() = default;
  CudaHostBuffer(CudaHostBuffer&& other) noexcept;
  CudaHostBuffer& operator=(CudaHostBuffer&& other) noexcept;
  CudaHostBuffer(const CudaHostBuffer&) = delete;
  CudaHostBuffer& operator=(const CudaHostBuffer&) = delete;
  ~CudaHostBuffer();

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// A non-blocking stream on one device.
class CudaStream {
 public:
  static absl::StatusOr<CudaStream> Create(int device);
  CudaStream() = default;
  CudaStream(CudaStream&& other) noexcept;
  CudaStream& operator=(CudaStream&& other) noexcept;
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  ~CudaStream();

  void* get() const { return stream_; }  // cudaStream_t
  int device() const { return device_; }
  absl::Status Synchronize() const;

 private:
  void* stream_ = nullptr;
  int device_ = 0;
};

// A timing event (cudaEventDefault).
class CudaEvent {
 public:
  static absl::StatusOr<CudaEvent> Create(int device);
  CudaEvent() = default;
  CudaEvent(CudaEvent&& other) noexcept;
  CudaEvent& operator=(CudaEvent&& other) noexcept;
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;
  ~CudaEvent();

  void* get() const { return event_; }  // cudaEvent_t
  absl::Status Record(void* stream);
  absl::Status Synchronize() const;
  // Milliseconds between `start` and this event (both recorded and complete).
  absl::StatusOr<float> ElapsedMsSince(const CudaEvent& start) const;

 private:
  void* event_ = nullptr;
};

// Stream-ordered copy of `bytes` between any two of host and device memory
// (cudaMemcpyDefault). Asynchronous with respect to the host for pinned host
// memory: synchronize `stream` before reading the destination.
absl::Status CudaMemcpyAsync(void* dst, const void* src, size_t bytes, void* stream);

// ---------------------------------------------------------------------------
// Weights.

// One ternary weight matrix [rows = N, cols = K] on one device, in the CUDA
// execution layouts (see docs/kernels.md; they never leave the device):
//  * the "fp" layout feeds the fp16/bf16 tensor-core paths (mma m16n8k16 /
//    wgmma k16 A fragments), codes q+1 at bits chosen so that a LOP3 with a
//    magic exponent and one HFMA2 give two fp16 weights;
//  * the "int8" layout feeds the int8 paths (mma m16n8k32 / wgmma k32 A
//    fragments), codes chosen so that one PRMT gives four int8 weights.
// Both are tiles of 16 rows x 128 columns = 512 bytes: one 16-byte load per
// lane of a warp. Rows are padded to a multiple of 256 and columns to a
// multiple of 128 with zero weights. Scales are replicated per row.
// Immutable after Create; safe to use from several streams at once.
class CudaTernaryWeights {
 public:
  struct Options {
    bool fp_layout = true;    // needed for ActivationQuant::kNone
    bool int8_layout = true;  // needed for ActivationQuant::kInt8
  };

  // Validates `packed` (ValidatePacked: codes, padding, finite positive
  // scales), repacks on the host and uploads. `bias` is null or `rows` floats
  // (host memory; must be finite). The view's buffers are not referenced
  // afterwards. Errors: INVALID_ARGUMENT (bad matrix, bias, device or
  // options), RESOURCE_EXHAUSTED, INTERNAL.
  static absl::StatusOr<std::unique_ptr<CudaTernaryWeights>> Create(
      const PackedTernaryView& packed, const float* bias, int device,
      Options options);
  static absl::StatusOr<std::unique_ptr<CudaTernaryWeights>> Create(
      const PackedTernaryView& packed, const float* bias, int device) {
    return Create(packed, bias, device, Options{});
  }

  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  int device() const { return device_; }
  bool has_bias() const { return bias_.data() != nullptr; }
  bool has_layout(ActivationQuant mode) const;
  // Bytes of device memory held.
  int64_t device_bytes() const;

  // Execution-layout internals, for the dispatcher (device pointers).
  int64_t padded_rows() const { return padded_rows_; }
  int64_t k_tiles() const { return k_tiles_; }  // padded cols / 128
  const void* codes(ActivationQuant mode) const;
  const float* scales() const { return static_cast<const float*>(scales_.data()); }
  const float* bias() const { return static_cast<const float*>(bias_.data()); }

 private:
  CudaTernaryWeights() = default;
  int64_t rows_ = 0;
  int64_t cols_ = 0;
  int64_t padded_rows_ = 0;
  int64_t k_tiles_ = 0;
  int device_ = 0;
  CudaBuffer fp_codes_;
  CudaBuffer int8_codes_;
  CudaBuffer scales_;  // [padded_rows] fp32
  CudaBuffer bias_;    // [padded_rows] fp32 or empty
};

// Host-side repacking into the execution layouts, exposed so that the layout
// can be unit-tested without a GPU. Output: padded_rows/16 * k_tiles * 128
// 32-bit words. `packed` must be valid (ValidatePacked).
std::vector<uint32_t> RepackTernaryForCudaFp(const PackedTernaryView& packed);
std::vector<uint32_t> RepackTernaryForCudaInt8(const PackedTernaryView& packed);
// Inverse lookups (host; for tests and docs): q in {-1, 0, 1} of element
// (row, col) of a repacked matrix with `k_tiles` column tiles.
int DecodeCudaFpLayout(const std::vector<uint32_t>& words, int64_t k_tiles,
                       int64_t row, int64_t col);
int DecodeCudaInt8Layout(const std::vector<uint32_t>& words, int64_t k_tiles,
                         int64_t row, int64_t col);
inline constexpr int64_t kCudaRowPad = 256;
inline constexpr int64_t kCudaColTile = 128;
// Split-K counters (one int per output tile) at the start of every
// workspace; a call splits K only when its tiles fit
// (kCudaSplitKCounterBytes / 4; forcing split_k > 1 beyond that is
// INVALID_ARGUMENT).
inline constexpr size_t kCudaSplitKCounterBytes = 16384;

// ---------------------------------------------------------------------------
// The kernels.

// The compiled kernel configurations (an explicit list; nothing else runs).
struct CudaKernelConfig {
  int id = 0;
  std::string name;     // e.g. "mma_w64_b16", "wgmma_w128_b128"
  int weight_rows = 0;  // block tile along N (weight rows)
  int batch_rows = 0;   // block tile along M (batch rows)
  bool wgmma = false;   // sm_90a warpgroup MMA (Hopper only)
  bool fp = true;       // compiled for ActivationQuant::kNone (fp16/bf16)
  bool int8 = true;     // compiled for ActivationQuant::kInt8
  bool split_k = true;  // accepts split_k > 1 (gemv configs split K in-block)
};
const std::vector<CudaKernelConfig>& CudaKernelConfigs();

inline constexpr int kCudaAutoConfig = -1;

struct CudaLinearArgs {
  int64_t m = 0;                  // batch rows (0: nothing to do)
  const void* x = nullptr;        // device, [m, x_stride] of x_dtype
  CudaDType x_dtype = CudaDType::kF32;  // kF32, kF16 or kBF16
  int64_t x_stride = 0;           // elements between rows; 0 = weights->cols()
  const CudaTernaryWeights* weights = nullptr;  // [n, k]; bias from weights
  ActivationQuant act_quant = ActivationQuant::kNone;
  Activation activation = Activation::kIdentity;
  void* y = nullptr;              // device, [m, y_stride] of y_dtype
  CudaDType y_dtype = CudaDType::kF32;  // kF32, kF16, kBF16; kS32 (int8 only)
  int64_t y_stride = 0;           // elements between rows; 0 = weights->rows()
  // Device scratch, at least CudaLinearWorkspaceBytes(args) bytes. Its first
  // kCudaSplitKCounterBytes hold split-K tile counters that must be zero
  // before the first call (CudaBuffer::Fill(0)); every call leaves them zero
  // again and nothing else is ever written there, so one workspace serves any
  // sequence of calls (shapes, modes, configurations). A workspace must not
  // be used by two calls that may run concurrently.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  // kCudaAutoConfig: chosen by shape and mode. Otherwise an id from
  // CudaKernelConfigs() (benchmarks and tests force each one).
  int config = kCudaAutoConfig;
  // 0: chosen automatically; else 1..K/128. > 1 is INVALID_ARGUMENT for a
  // configuration with split_k == false.
  int split_k = 0;
  // Programmatic dependent launch (Hopper, sm_90+; ignored on older
  // devices). When set, this call's launches may start while the previous
  // kernel on `stream` is still running: the activation preparation, the
  // small-M (gemv) and the warp-specialized (ws) configurations start early
  // and fetch their first packed weights meanwhile. x, the workspace and y
  // are read or written only after that previous kernel has completed, so
  // results are identical with or without it; the other configurations
  // launch as usual. The caller promises that the weights (codes, scales,
  // bias) are not written by anything still running on the stream: only
  // then may this launch overlap it. CudaTernaryWeights are immutable after
  // Create, so this holds unless their device memory is written directly.
  bool overlap_previous_kernel = false;
};

// What CudaTernaryLinear will run for `args`.
struct CudaLaunchPlan {
  int config = 0;
  int split_k = 1;
  bool prepare_activations = false;  // a conversion/quantization launch first
  size_t workspace_bytes = 0;
  // overlap_previous_kernel was set and the device honors it (sm_90+): the
  // preparation launch, and the GEMM launch of a gemv or ws configuration,
  // use programmatic dependent launch.
  bool overlap_previous_kernel = false;
};

// Validates `args` (shapes, dtypes, pointers, the configuration) and returns
// the plan; no CUDA calls. Errors: INVALID_ARGUMENT, FAILED_PRECONDITION.
absl::StatusOr<CudaLaunchPlan> CudaPlanLinear(const CudaLinearArgs& args, int device_sm_major,
                                              int device_sms, bool device_has_wgmma);
// The same for the weights' device (queried once and cached).
absl::StatusOr<CudaLaunchPlan> CudaPlanLinear(const CudaLinearArgs& args);
absl::StatusOr<size_t> CudaLinearWorkspaceBytes(const CudaLinearArgs& args);

// Enqueues the layer on `stream` (a cudaStream_t on the weights' device).
// Asynchronous: returns once launched. The x, y and workspace buffers must
// stay alive until the stream has run it. Errors: see the top of this file.
absl::Status CudaTernaryLinear(const CudaLinearArgs& args, void* stream);

// Whether `device` runs the sm_90a (wgmma) kernels of this build.
absl::StatusOr<bool> CudaDeviceHasWgmma(int device);

}  // namespace bitnet

#endif  // BITNET_KERNELS_CUDA_TERNARY_CUDA_H_

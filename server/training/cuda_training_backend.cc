#include "server/training/cuda_training_backend.h"

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#if BITNET_TRAINING_CUDA
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <algorithm>
#include <climits>
#include <type_traits>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/call_once.h"
#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "kernels/activation.h"
#include "kernels/ternary_format.h"
#include "kernels/ternary_gemm.h"
#endif

namespace bitnet::training {

#if !BITNET_TRAINING_CUDA

bool CudaTrainingBackendBuilt() { return false; }

absl::StatusOr<std::unique_ptr<TrainingBackend>> CreateCudaTrainingBackend(
    const CudaTrainingBackendOptions&) {
  return absl::UnavailableError(
      "this build has no CUDA training backend (configure with "
      "-DBITNET_CUDA=ON or AUTO and a CUDA toolkit)");
}

#else  // BITNET_TRAINING_CUDA

namespace {

// The cuBLAS entry points used, resolved from the dlopen'ed library. The
// declarations in cublas_v2.h give the types; nothing links libcublas.
struct CublasApi {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasDestroy_v2) destroy = nullptr;
  decltype(&cublasSetStream_v2) set_stream = nullptr;
  decltype(&cublasSetMathMode) set_math_mode = nullptr;
  decltype(&cublasSgemm_v2) sgemm = nullptr;
};

absl::StatusOr<const CublasApi*> LoadCublas() {
  static absl::once_flag once;
  static absl::StatusOr<const CublasApi*>* result = nullptr;
  absl::call_once(once, [] {
    void* lib = nullptr;
    std::string errors;
    for (const char* name :
         {"libcublas.so.13", "libcublas.so.12", "libcublas.so"}) {
      lib = ::dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (lib != nullptr) break;
      const char* err = ::dlerror();
      absl::StrAppend(&errors, errors.empty() ? "" : "; ",
                      err != nullptr ? err : name);
    }
    if (lib == nullptr) {
      result = new absl::StatusOr<const CublasApi*>(absl::UnavailableError(
          absl::StrCat("cannot load cuBLAS (", errors,
                       "); install the CUDA toolkit's libcublas or add its "
                       "directory to LD_LIBRARY_PATH")));
      return;
    }
    auto* api = new CublasApi;
    std::string missing;
    auto resolve = [&](auto& fn, const char* symbol) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(
          ::dlsym(lib, symbol));
      if (fn == nullptr) absl::StrAppend(&missing, " ", symbol);
    };
    resolve(api->create, "cublasCreate_v2");
    resolve(api->destroy, "cublasDestroy_v2");
    resolve(api->set_stream, "cublasSetStream_v2");
    resolve(api->set_math_mode, "cublasSetMathMode");
    resolve(api->sgemm, "cublasSgemm_v2");
    if (!missing.empty()) {
      delete api;
      result = new absl::StatusOr<const CublasApi*>(absl::UnavailableError(
          absl::StrCat("the loaded cuBLAS lacks:", missing)));
      return;
    }
    result = new absl::StatusOr<const CublasApi*>(api);  // lives forever
  });
  return *result;
}

absl::Status CudaError(cudaError_t err, const char* what) {
  return absl::InternalError(
      absl::StrCat("cuda training backend: ", what, ": ",
                   cudaGetErrorName(err), " (", cudaGetErrorString(err), ")"));
}

absl::Status CublasError(cublasStatus_t status, const char* what) {
  return absl::InternalError(absl::StrCat("cuda training backend: ", what,
                                          ": cuBLAS status ",
                                          static_cast<int>(status)));
}

#define BITNET_CUDA_RETURN_IF_ERROR(expr, what)                 \
  do {                                                          \
    const cudaError_t bitnet_cuda_err_ = (expr);                \
    if (bitnet_cuda_err_ != cudaSuccess)                        \
      return CudaError(bitnet_cuda_err_, what);                 \
  } while (0)

#define BITNET_CUBLAS_RETURN_IF_ERROR(expr, what)               \
  do {                                                          \
    const cublasStatus_t bitnet_cublas_st_ = (expr);            \
    if (bitnet_cublas_st_ != CUBLAS_STATUS_SUCCESS)             \
      return CublasError(bitnet_cublas_st_, what);              \
  } while (0)

// A grow-only device buffer.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  absl::StatusOr<float*> Reserve(int64_t floats) {
    const size_t bytes = static_cast<size_t>(std::max<int64_t>(floats, 1)) *
                         sizeof(float);
    if (bytes > capacity_) {
      if (ptr_ != nullptr) cudaFree(ptr_);
      ptr_ = nullptr;
      capacity_ = 0;
      void* p = nullptr;
      BITNET_CUDA_RETURN_IF_ERROR(cudaMalloc(&p, bytes), "cudaMalloc");
      ptr_ = p;
      capacity_ = bytes;
    }
    return static_cast<float*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  size_t capacity_ = 0;
};

class CudaTrainingBackend final : public TrainingBackend {
 public:
  static absl::StatusOr<std::unique_ptr<TrainingBackend>> Create(
      const CudaTrainingBackendOptions& options) {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
      return absl::UnavailableError(absl::StrCat(
          "no CUDA device is visible (",
          err != cudaSuccess ? cudaGetErrorString(err) : "0 devices", ")"));
    }
    if (options.device < 0 || options.device >= count) {
      return absl::UnavailableError(absl::StrFormat(
          "CUDA device %d requested, %d visible", options.device, count));
    }
    absl::StatusOr<const CublasApi*> api = LoadCublas();
    if (!api.ok()) return api.status();
    auto backend = std::unique_ptr<CudaTrainingBackend>(
        new CudaTrainingBackend(options.device, *api));
    if (absl::Status s = backend->Init(); !s.ok()) return s;
    return std::unique_ptr<TrainingBackend>(std::move(backend));
  }

  ~CudaTrainingBackend() override {
    cudaSetDevice(device_);
    if (handle_ != nullptr) api_->destroy(handle_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  std::string_view name() const override { return "cuda"; }

  absl::Status Gemm(const GemmArgs& args) override;
  absl::Status TernaryForward(const TernaryGemmArgs& args) override;

 private:
  CudaTrainingBackend(int device, const CublasApi* api)
      : device_(device), api_(api) {}

  absl::Status Init() {
    BITNET_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_), "cudaSetDevice");
    BITNET_CUDA_RETURN_IF_ERROR(
        cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
        "cudaStreamCreate");
    BITNET_CUBLAS_RETURN_IF_ERROR(api_->create(&handle_), "cublasCreate");
    BITNET_CUBLAS_RETURN_IF_ERROR(api_->set_stream(handle_, stream_),
                                  "cublasSetStream");
    // Plain fp32 (no TF32): the CPU and GPU steps must agree closely.
    BITNET_CUBLAS_RETURN_IF_ERROR(
        api_->set_math_mode(handle_, CUBLAS_DEFAULT_MATH),
        "cublasSetMathMode");
    return absl::OkStatus();
  }

  // Row-major C[m, n] = alpha op(A) op(B) + beta C on device pointers, as
  // the column-major product C^T = op(B)^T op(A)^T.
  absl::Status DeviceGemm(bool transpose_a, bool transpose_b, int64_t m,
                          int64_t n, int64_t k, float alpha, const float* a,
                          int64_t lda, const float* b, int64_t ldb, float beta,
                          float* c, int64_t ldc)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (int64_t v : {m, n, k, lda, ldb, ldc}) {
      if (v > INT_MAX) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "cuda training backend: a GEMM dimension (%d) exceeds INT_MAX", v));
      }
    }
    BITNET_CUBLAS_RETURN_IF_ERROR(
        api_->sgemm(handle_, transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                    transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                    static_cast<int>(n), static_cast<int>(m),
                    static_cast<int>(k), &alpha, b, static_cast<int>(ldb), a,
                    static_cast<int>(lda), &beta, c, static_cast<int>(ldc)),
        "cublasSgemm");
    return absl::OkStatus();
  }

  absl::Status Upload(float* dst, const float* src, int64_t floats)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (floats == 0) return absl::OkStatus();
    BITNET_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(dst, src, floats * sizeof(float),
                        cudaMemcpyHostToDevice, stream_),
        "cudaMemcpy to device");
    return absl::OkStatus();
  }

  const int device_;
  const CublasApi* const api_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t handle_ = nullptr;

  absl::Mutex mu_;
  DeviceBuffer a_ ABSL_GUARDED_BY(mu_);
  DeviceBuffer b_ ABSL_GUARDED_BY(mu_);
  DeviceBuffer c_ ABSL_GUARDED_BY(mu_);
  // Host staging for TernaryForward (int8 codes and ternary codes as fp32,
  // and the raw sums).
  std::vector<float> host_x_ ABSL_GUARDED_BY(mu_);
  std::vector<float> host_w_ ABSL_GUARDED_BY(mu_);
  std::vector<float> host_y_ ABSL_GUARDED_BY(mu_);
};

// Elements spanned by a row-major matrix of `rows` x `cols` with leading
// dimension `ld`.
int64_t Span(int64_t rows, int64_t cols, int64_t ld) {
  return rows == 0 || cols == 0 ? 0 : (rows - 1) * ld + cols;
}

absl::Status CudaTrainingBackend::Gemm(const GemmArgs& args) {
  if (absl::Status s = CheckGemmArgs(args); !s.ok()) return s;
  const int64_t m = args.m, n = args.n, k = args.k;
  if (m == 0 || n == 0) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  BITNET_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_), "cudaSetDevice");
  const int64_t a_span = args.transpose_a ? Span(k, m, args.lda)
                                          : Span(m, k, args.lda);
  const int64_t b_span = args.transpose_b ? Span(n, k, args.ldb)
                                          : Span(k, n, args.ldb);
  absl::StatusOr<float*> a = a_.Reserve(a_span);
  if (!a.ok()) return a.status();
  absl::StatusOr<float*> b = b_.Reserve(b_span);
  if (!b.ok()) return b.status();
  absl::StatusOr<float*> c = c_.Reserve(Span(m, n, args.ldc));
  if (!c.ok()) return c.status();
  if (absl::Status s = Upload(*a, args.a, a_span); !s.ok()) return s;
  if (absl::Status s = Upload(*b, args.b, b_span); !s.ok()) return s;
  const size_t pitch = args.ldc * sizeof(float);
  if (args.beta != 0.0f) {
    BITNET_CUDA_RETURN_IF_ERROR(
        cudaMemcpy2DAsync(*c, pitch, args.c, pitch, n * sizeof(float), m,
                          cudaMemcpyHostToDevice, stream_),
        "cudaMemcpy2D C to device");
  }
  if (k == 0) {
    // cuBLAS would scale C by beta too, but with k == 0 some versions
    // reject lda/ldb; do it here. (beta == 0: C = 0, as BLAS.)
    for (int64_t i = 0; i < m; ++i) {
      float* row = args.c + i * args.ldc;
      for (int64_t j = 0; j < n; ++j) {
        row[j] = args.beta == 0.0f ? 0.0f : args.beta * row[j];
      }
    }
    return absl::OkStatus();
  }
  if (absl::Status s =
          DeviceGemm(args.transpose_a, args.transpose_b, m, n, k, args.alpha,
                     *a, args.lda, *b, args.ldb, args.beta, *c, args.ldc);
      !s.ok()) {
    return s;
  }
  BITNET_CUDA_RETURN_IF_ERROR(
      cudaMemcpy2DAsync(args.c, pitch, *c, pitch, n * sizeof(float), m,
                        cudaMemcpyDeviceToHost, stream_),
      "cudaMemcpy2D C to host");
  BITNET_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_),
                              "cudaStreamSynchronize");
  return absl::OkStatus();
}

absl::Status CudaTrainingBackend::TernaryForward(const TernaryGemmArgs& args) {
  if (absl::Status s = CheckTernaryGemmArgs(args); !s.ok()) return s;
  const int64_t m = args.m;
  const int64_t n = args.weight.rows;
  const int64_t k = args.weight.cols;
  if (m == 0) return absl::OkStatus();
  const bool int8 = args.act_quant == ActivationQuant::kInt8;
  // fp32 holds every integer up to 2^24 exactly; |xq| <= 128, |q| <= 1.
  constexpr int64_t kMaxExactK = (int64_t{1} << 24) / 128;
  if (int8 && k > kMaxExactK) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "cuda training backend: in_features %d exceeds %d, the largest K "
        "whose int8 sums fp32 holds exactly",
        k, kMaxExactK));
  }
  absl::MutexLock lock(&mu_);
  BITNET_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_), "cudaSetDevice");

  // Inputs: int8 codes (as fp32) and the per-row scales, computed on the
  // host with the oracle's own function; or x itself in none mode.
  std::vector<float> row_scale;
  const float* x_src = args.x;
  if (int8) {
    std::vector<int8_t> xq(m * k);
    row_scale.resize(m);
    QuantizeRowsInt8(args.x, m, k, xq.data(), row_scale.data());
    host_x_.resize(m * k);
    for (int64_t e = 0; e < m * k; ++e) host_x_[e] = xq[e];
    x_src = host_x_.data();
  }
  // Ternary codes q in {-1, 0, 1} as fp32, [n, k].
  host_w_.resize(n * k);
  {
    const std::vector<int8_t> q = UnpackTernary(args.weight);
    for (int64_t e = 0; e < n * k; ++e) host_w_[e] = q[e];
  }
  absl::StatusOr<float*> dx = a_.Reserve(m * k);
  if (!dx.ok()) return dx.status();
  absl::StatusOr<float*> dw = b_.Reserve(n * k);
  if (!dw.ok()) return dw.status();
  absl::StatusOr<float*> dy = c_.Reserve(m * n);
  if (!dy.ok()) return dy.status();
  if (absl::Status s = Upload(*dx, x_src, m * k); !s.ok()) return s;
  if (absl::Status s = Upload(*dw, host_w_.data(), n * k); !s.ok()) return s;
  // acc [m, n] = x [m, k] . q^T.
  if (absl::Status s = DeviceGemm(false, true, m, n, k, 1.0f, *dx, k, *dw, k,
                                  0.0f, *dy, n);
      !s.ok()) {
    return s;
  }
  host_y_.resize(m * n);
  BITNET_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(host_y_.data(), *dy, m * n * sizeof(float),
                      cudaMemcpyDeviceToHost, stream_),
      "cudaMemcpy to host");
  BITNET_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_),
                              "cudaStreamSynchronize");

  // The epilogue with the oracle's float operations.
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      const float acc = host_y_[i * n + j];
      float v;
      if (int8) {
        const float bias = args.bias != nullptr ? args.bias[j] : 0.0f;
        v = Int8Dequantize(static_cast<int32_t>(acc),
                           args.weight.ScaleForRow(j), row_scale[i], bias);
      } else {
        const double bias = args.bias != nullptr ? args.bias[j] : 0.0;
        v = static_cast<float>(static_cast<double>(acc) *
                                   static_cast<double>(
                                       args.weight.ScaleForRow(j)) +
                               bias);
      }
      args.y[i * n + j] = ApplyActivation(args.activation, v);
    }
  }
  return absl::OkStatus();
}

}  // namespace

bool CudaTrainingBackendBuilt() { return true; }

absl::StatusOr<std::unique_ptr<TrainingBackend>> CreateCudaTrainingBackend(
    const CudaTrainingBackendOptions& options) {
  return CudaTrainingBackend::Create(options);
}

#endif  // BITNET_TRAINING_CUDA

}  // namespace bitnet::training

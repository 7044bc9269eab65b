// CUDA ternary kernels (kernels/cuda/ternary_cuda.h) against the CPU oracle
// (ReferenceTernaryGemm / ReferenceInt8Accumulators), every compiled
// configuration, both activation modes, every input and output dtype, odd
// shapes, fresh random data each run (the seed is printed on failure) and
// outputs poisoned before each run. GPU tests skip without a device.
//
// BITNET_CUDA_TEST_QUICK=1 shrinks the grid (for compute-sanitizer runs).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <array>
#include <functional>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/activation.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/ternary_cuda.h"
#include "kernels/ternary_format.h"
#include "kernels/ternary_gemm.h"

namespace bitnet {
namespace {

bool HasGpu() {
  absl::StatusOr<int> n = CudaDeviceCount();
  return n.ok() && *n > 0;
}

#define SKIP_WITHOUT_GPU() \
  if (!HasGpu()) GTEST_SKIP() << "no CUDA device"

#define TEST_RETURN_IF_ERROR(expr)            \
  do {                                        \
    const absl::Status test_status_ = (expr); \
    if (!test_status_.ok()) return test_status_; \
  } while (0)

bool QuickMode() {
  const char* q = std::getenv("BITNET_CUDA_TEST_QUICK");
  return q != nullptr && std::string(q) == "1";
}

uint64_t FreshSeed() {
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

PackedTernaryMatrix RandomWeights(std::mt19937_64& rng, int64_t n, int64_t k,
                                  ScaleGranularity granularity) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> w(static_cast<size_t>(n * k));
  for (float& v : w) v = normal(rng);
  absl::StatusOr<PackedTernaryMatrix> packed = QuantizeAndPack(w, n, k, granularity);
  EXPECT_TRUE(packed.ok()) << packed.status();
  return *std::move(packed);
}

// Host conversions (cuda_fp16.h / cuda_bf16.h host paths, round to nearest).
uint16_t ToHalfBits(float v) {
  const __half h = __float2half_rn(v);
  uint16_t b;
  std::memcpy(&b, &h, 2);
  return b;
}
float FromHalfBits(uint16_t b) {
  __half_raw raw;
  raw.x = b;
  return __half2float(__half(raw));
}
uint16_t ToBf16Bits(float v) {
  const __nv_bfloat16 h = __float2bfloat16_rn(v);
  uint16_t b;
  std::memcpy(&b, &h, 2);
  return b;
}
float FromBf16Bits(uint16_t b) {
  __nv_bfloat16_raw raw;
  raw.x = b;
  return __bfloat162float(__nv_bfloat16(raw));
}

// x as the device will see it: bytes of dtype plus the exact float values.
struct HostInput {
  std::vector<uint8_t> bytes;
  std::vector<float> values;  // [m, k] (stride dropped)
};

// Rows get magnitudes 10^u, u uniform in [-3, max_log10].
HostInput MakeInput(std::mt19937_64& rng, int64_t m, int64_t k, int64_t stride, CudaDType dtype,
                    float max_log10) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> row_mag(-3.0f, max_log10);
  HostInput in;
  const size_t eb = CudaDTypeBytes(dtype);
  in.bytes.assign(static_cast<size_t>(m * stride) * eb, 0x7F);  // stride gap: garbage
  in.values.resize(static_cast<size_t>(m * k));
  for (int64_t i = 0; i < m; ++i) {
    const float mag = std::pow(10.0f, row_mag(rng));  // rows of very different scales
    for (int64_t c = 0; c < k; ++c) {
      float v = normal(rng) * mag;
      uint8_t* dst = in.bytes.data() + static_cast<size_t>(i * stride + c) * eb;
      if (dtype == CudaDType::kF16) {
        const uint16_t b = ToHalfBits(v);
        v = FromHalfBits(b);
        std::memcpy(dst, &b, 2);
      } else if (dtype == CudaDType::kBF16) {
        const uint16_t b = ToBf16Bits(v);
        v = FromBf16Bits(b);
        std::memcpy(dst, &b, 2);
      } else {
        std::memcpy(dst, &v, 4);
      }
      in.values[static_cast<size_t>(i * k + c)] = v;
    }
  }
  return in;
}

float OutputAt(const std::vector<uint8_t>& y, CudaDType dtype, int64_t idx) {
  switch (dtype) {
    case CudaDType::kF16: {
      uint16_t b;
      std::memcpy(&b, y.data() + idx * 2, 2);
      return FromHalfBits(b);
    }
    case CudaDType::kBF16: {
      uint16_t b;
      std::memcpy(&b, y.data() + idx * 2, 2);
      return FromBf16Bits(b);
    }
    case CudaDType::kS32: {
      int32_t v;
      std::memcpy(&v, y.data() + idx * 4, 4);
      return static_cast<float>(v);
    }
    default: {
      float v;
      std::memcpy(&v, y.data() + idx * 4, 4);
      return v;
    }
  }
}

float RoundTo(CudaDType dtype, float v) {
  if (dtype == CudaDType::kF16) return FromHalfBits(ToHalfBits(v));
  if (dtype == CudaDType::kBF16) return FromBf16Bits(ToBf16Bits(v));
  return v;
}

// The oracle's int32 accumulators for float activations x [m, k], quantized
// per row as the CPU does.
std::vector<int32_t> OracleInt8Accumulators(const std::vector<float>& x, int64_t m, int64_t k,
                                            const PackedTernaryMatrix& w) {
  std::vector<int8_t> xq(static_cast<size_t>(m * k));
  std::vector<float> s(static_cast<size_t>(m));
  QuantizeRowsInt8(x.data(), m, k, xq.data(), s.data());
  std::vector<int32_t> acc(static_cast<size_t>(m * w.rows));
  ReferenceInt8Accumulators(xq.data(), m, w.view(), acc.data());
  return acc;
}

// Accumulators in the device's int32 output `dy` that differ from `want`
// (-1 when they cannot be copied back).
int64_t AccumulatorMismatches(const CudaBuffer& dy, const std::vector<int32_t>& want) {
  std::vector<int32_t> got(want.size());
  if (!dy.CopyToHost(got.data(), got.size() * 4).ok()) return -1;
  int64_t bad = 0;
  for (size_t j = 0; j < got.size(); ++j) bad += got[j] != want[j];
  return bad;
}

// One unit of the grid.
struct Case {
  int64_t m, n, k;
  ActivationQuant mode;
  CudaDType x_dtype;
  CudaDType y_dtype;
  Activation activation;
  bool bias;
  ScaleGranularity granularity;
  int64_t x_pad;  // extra elements per x row (stride = k + x_pad)
  int64_t y_pad;
  int split_k;    // 0 = auto
};

std::string Describe(const Case& c, int config) {
  return "m=" + std::to_string(c.m) + " n=" + std::to_string(c.n) + " k=" + std::to_string(c.k) +
         " mode=" + std::string(ActivationQuantName(c.mode)) +
         " x=" + std::string(CudaDTypeName(c.x_dtype)) +
         " y=" + std::string(CudaDTypeName(c.y_dtype)) +
         " act=" + std::string(ActivationName(c.activation)) + " bias=" + std::to_string(c.bias) +
         " per_tensor=" + std::to_string(c.granularity == ScaleGranularity::kPerTensor) +
         " x_pad=" + std::to_string(c.x_pad) + " y_pad=" + std::to_string(c.y_pad) +
         " split_k=" + std::to_string(c.split_k) + " config=" +
         (config < 0 ? std::string("auto") : CudaKernelConfigs()[config].name);
}

// Runs `c` on every config in `configs` (kCudaAutoConfig allowed) and checks
// each against the oracle. Returns the number of configs run.
int RunCase(const Case& c, const std::vector<int>& configs, bool has_wgmma, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const PackedTernaryMatrix w = RandomWeights(rng, c.n, c.k, c.granularity);
  std::vector<float> bias;
  if (c.bias) {
    std::uniform_real_distribution<float> u(-2.0f, 2.0f);
    bias.resize(static_cast<size_t>(c.n));
    for (float& b : bias) b = u(rng);
  }
  absl::StatusOr<std::unique_ptr<CudaTernaryWeights>> dw =
      CudaTernaryWeights::Create(w.view(), c.bias ? bias.data() : nullptr, 0);
  EXPECT_TRUE(dw.ok()) << dw.status();
  if (!dw.ok()) return 0;

  const int64_t x_stride = c.k + c.x_pad;
  const int64_t y_stride = c.n + c.y_pad;
  // f16 outputs overflow past 65504: keep those rows' magnitudes small.
  const HostInput in =
      MakeInput(rng, c.m, c.k, x_stride, c.x_dtype, c.y_dtype == CudaDType::kF16 ? 0.5f : 3.0f);

  // Oracle outputs (float) and, for int8, the accumulators.
  std::vector<float> ref(static_cast<size_t>(c.m * c.n));
  TernaryGemmArgs ra;
  ra.m = c.m;
  ra.x = in.values.data();
  ra.weight = w.view();
  ra.bias = c.bias ? bias.data() : nullptr;
  ra.act_quant = c.mode;
  ra.activation = c.activation;
  ra.y = ref.data();
  EXPECT_TRUE(ReferenceTernaryGemm(ra).ok());
  std::vector<int32_t> ref_acc;
  if (c.y_dtype == CudaDType::kS32) ref_acc = OracleInt8Accumulators(in.values, c.m, c.k, w);

  absl::StatusOr<CudaBuffer> dx = CudaBuffer::Create(in.bytes.size(), 0);
  EXPECT_TRUE(dx.ok()) << dx.status();
  EXPECT_TRUE(dx->CopyFromHost(in.bytes.data(), in.bytes.size()).ok());
  const size_t y_bytes = static_cast<size_t>(c.m * y_stride) * CudaDTypeBytes(c.y_dtype);
  absl::StatusOr<CudaBuffer> dy = CudaBuffer::Create(y_bytes, 0);
  EXPECT_TRUE(dy.ok()) << dy.status();

  int ran = 0;
  for (int config : configs) {
    if (config >= 0) {
      const CudaKernelConfig& cfg = CudaKernelConfigs()[config];
      if (cfg.wgmma && !has_wgmma) continue;
      if (c.mode == ActivationQuant::kNone ? !cfg.fp : !cfg.int8) continue;
      if (c.split_k > 1 && !cfg.split_k) continue;
    }
    SCOPED_TRACE(Describe(c, config) + " seed=" + std::to_string(seed));
    CudaLinearArgs a;
    a.m = c.m;
    a.x = dx->data();
    a.x_dtype = c.x_dtype;
    a.x_stride = x_stride;
    a.weights = dw->get();
    a.act_quant = c.mode;
    a.activation = c.activation;
    a.y = dy->data();
    a.y_dtype = c.y_dtype;
    a.y_stride = y_stride;
    a.config = config;
    a.split_k = c.split_k;
    absl::StatusOr<size_t> ws_bytes = CudaLinearWorkspaceBytes(a);
    EXPECT_TRUE(ws_bytes.ok()) << ws_bytes.status();
    if (!ws_bytes.ok()) continue;
    absl::StatusOr<CudaBuffer> ws = CudaBuffer::Create(*ws_bytes, 0);
    EXPECT_TRUE(ws.ok()) << ws.status();
    EXPECT_TRUE(ws->Fill(0).ok());
    a.workspace = ws->data();
    a.workspace_bytes = ws->bytes();
    // Twice: the second run checks that split-K counters were left at zero.
    for (int rep = 0; rep < 2; ++rep) {
      EXPECT_TRUE(dy->Fill(0x7F).ok());  // f32 3.4e38, f16 NaN, s32 2^31-ish
      const absl::Status st = CudaTernaryLinear(a, nullptr);
      EXPECT_TRUE(st.ok()) << st;
      if (!st.ok()) break;
      std::vector<uint8_t> y(y_bytes);
      EXPECT_TRUE(dy->CopyToHost(y.data(), y.size()).ok());

      double err2 = 0.0;
      double ref2 = 0.0;
      int64_t bad = 0;
      int64_t first_bad = -1;
      for (int64_t i = 0; i < c.m; ++i) {
        for (int64_t j = 0; j < y_stride; ++j) {
          const int64_t idx = i * y_stride + j;
          if (j >= c.n) {  // stride gap: must be untouched
            uint8_t poison[4];
            std::memset(poison, 0x7F, 4);
            if (std::memcmp(y.data() + idx * CudaDTypeBytes(c.y_dtype), poison,
                            CudaDTypeBytes(c.y_dtype)) != 0) {
              ++bad;
              if (first_bad < 0) first_bad = idx;
            }
            continue;
          }
          const float got = OutputAt(y, c.y_dtype, idx);
          if (c.y_dtype == CudaDType::kS32) {
            int32_t g;
            std::memcpy(&g, y.data() + idx * 4, 4);
            if (g != ref_acc[static_cast<size_t>(i * c.n + j)]) {
              ++bad;
              if (first_bad < 0) first_bad = idx;
            }
            continue;
          }
          const float want = ref[static_cast<size_t>(i * c.n + j)];
          if (!std::isfinite(got)) {
            ++bad;
            if (first_bad < 0) first_bad = idx;
            continue;
          }
          if (c.mode == ActivationQuant::kInt8) {
            // Accumulators and the float epilogue are identical to the CPU;
            // only erf/exp (GELU, SiLU) and the output rounding may differ.
            const float want_r = RoundTo(c.y_dtype, want);
            float tol = 1e-6f * std::fabs(want) + 1e-30f;
            if (c.y_dtype != CudaDType::kF32) {
              // One unit in the last place of the output type.
              tol = std::fabs(want) * (c.y_dtype == CudaDType::kF16 ? 1.0f / 1024 : 1.0f / 128) +
                    1e-30f;
              if (c.activation == Activation::kIdentity || c.activation == Activation::kRelu) {
                tol = 0.0f;
              }
            }
            if (c.activation == Activation::kGelu || c.activation == Activation::kSilu) {
              // GPU erff/expf and the CPU's std::erf/std::exp may differ in the
              // last bit; for x << 0, 1 + erf(x) cancels and turns that into a
              // large relative but tiny absolute difference (seen: 1.7e-7 on a
              // -4.7e-7 f16 subnormal). The accumulators themselves are tested
              // bit for bit in Int8AccumulatorsAreBitIdentical.
              tol += 1e-6f;
            }
            if (!(std::fabs(got - want_r) <= tol)) {
              ++bad;
              if (first_bad < 0) first_bad = idx;
            }
          } else {
            err2 += static_cast<double>(got - want) * (got - want);
            ref2 += static_cast<double>(want) * want;
          }
        }
      }
      if (first_bad >= 0) {
        const int64_t i = first_bad / y_stride;
        const int64_t j = first_bad % y_stride;
        ADD_FAILURE() << bad << " bad outputs; first at row " << i << " col " << j << ": got "
                      << OutputAt(y, c.y_dtype, first_bad) << " want "
                      << (j < c.n ? (c.y_dtype == CudaDType::kS32
                                         ? static_cast<float>(ref_acc[static_cast<size_t>(i * c.n + j)])
                                         : ref[static_cast<size_t>(i * c.n + j)])
                                  : 0.0f);
      }
      if (c.mode == ActivationQuant::kNone && c.m > 0) {
        const double rel = std::sqrt(err2 / std::max(ref2, 1e-300));
        // 2e-3 for the computation, plus the rounding of a 16-bit output
        // (bf16 keeps 8 significant bits: up to 2^-9 relative per element).
        const double out_rounding = c.y_dtype == CudaDType::kBF16  ? 4e-3
                                    : c.y_dtype == CudaDType::kF16 ? 5e-4
                                                                   : 0.0;
        EXPECT_LT(rel, 2e-3 + out_rounding) << "relative error";
      }
    }
    ++ran;
  }
  return ran;
}

TEST(CudaRepackTest, LayoutsRoundTripAndPadWithZeros) {
  // Host only: no GPU needed.
  std::mt19937_64 rng(FreshSeed());
  for (const auto& [n, k] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {17, 129}, {300, 333}}) {
    const PackedTernaryMatrix w = RandomWeights(rng, n, k, ScaleGranularity::kPerRow);
    const std::vector<int8_t> q = UnpackTernary(w.view());
    const int64_t k_tiles = (k + 127) / 128;
    const int64_t padded_rows = (n + kCudaRowPad - 1) / kCudaRowPad * kCudaRowPad;
    const std::vector<uint32_t> fp = RepackTernaryForCudaFp(w.view());
    const std::vector<uint32_t> i8 = RepackTernaryForCudaInt8(w.view());
    ASSERT_EQ(fp.size(), static_cast<size_t>(padded_rows / 16 * k_tiles * 128));
    ASSERT_EQ(i8.size(), fp.size());
    for (int64_t r = 0; r < padded_rows; r += (r < n + 16 ? 1 : 37)) {
      for (int64_t c = 0; c < k_tiles * 128; ++c) {
        const int want = (r < n && c < k) ? q[static_cast<size_t>(r * k + c)] : 0;
        ASSERT_EQ(DecodeCudaFpLayout(fp, k_tiles, r, c), want) << r << "," << c;
        ASSERT_EQ(DecodeCudaInt8Layout(i8, k_tiles, r, c), want) << r << "," << c;
      }
    }
  }
}

TEST(CudaRepackTest, CodesPastTheLastColumnNeverReachTheLayouts) {
  // Host only. The repack reads whole interchange words; the codes of a
  // row's last word past `cols` must read as q = 0 whatever they hold (here
  // code 0, q = -1, which ValidatePacked would refuse).
  std::mt19937_64 rng(FreshSeed());
  const int64_t n = 20, k = 133;  // 133 = 8 words + 5 codes
  PackedTernaryMatrix w = RandomWeights(rng, n, k, ScaleGranularity::kPerRow);
  const std::vector<int8_t> q = UnpackTernary(w.view());
  const int64_t words_per_row = WordsPerRow(k);
  for (int64_t r = 0; r < n; ++r) {
    uint32_t& last = reinterpret_cast<uint32_t&>(w.words[r * words_per_row + words_per_row - 1]);
    last &= (1u << (2 * (k % kCodesPerWord))) - 1;  // codes past k -> 0
  }
  const std::vector<uint32_t> fp = RepackTernaryForCudaFp(w.view());
  const std::vector<uint32_t> i8 = RepackTernaryForCudaInt8(w.view());
  const int64_t k_tiles = 2;
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t c = 0; c < k_tiles * 128; ++c) {
      const int want = c < k ? q[static_cast<size_t>(r * k + c)] : 0;
      ASSERT_EQ(DecodeCudaFpLayout(fp, k_tiles, r, c), want) << r << "," << c;
      ASSERT_EQ(DecodeCudaInt8Layout(i8, k_tiles, r, c), want) << r << "," << c;
    }
  }
}

TEST(CudaDeviceTest, DeviceCountIsNeverAnErrorWithoutGpu) {
  absl::StatusOr<int> n = CudaDeviceCount();
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_GE(*n, 0);
}

// Captures what `enqueue` puts on `stream` into a CUDA graph, replays it once
// (asynchronously) and frees the graph.
absl::Status RunAsCapturedGraph(void* stream, const std::function<absl::Status()>& enqueue) {
  auto s = static_cast<cudaStream_t>(stream);
  BITNET_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  const absl::Status enqueued = enqueue();
  cudaGraph_t raw_graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(s, &raw_graph);  // always end the capture
  std::unique_ptr<CUgraph_st, decltype(&cudaGraphDestroy)> graph(raw_graph, &cudaGraphDestroy);
  TEST_RETURN_IF_ERROR(enqueued);
  BITNET_CUDA_RETURN_IF_ERROR(ended);
  cudaGraphExec_t raw_exec = nullptr;
  BITNET_CUDA_RETURN_IF_ERROR(cudaGraphInstantiate(&raw_exec, graph.get(), 0));
  std::unique_ptr<CUgraphExec_st, decltype(&cudaGraphExecDestroy)> exec(raw_exec,
                                                                        &cudaGraphExecDestroy);
  BITNET_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(exec.get(), s));
  return absl::OkStatus();
}

std::vector<int> AllConfigs() {
  std::vector<int> ids;
  for (const CudaKernelConfig& c : CudaKernelConfigs()) ids.push_back(c.id);
  ids.push_back(kCudaAutoConfig);
  return ids;
}

// Every configuration, both modes, all input dtypes, over odd shapes.
TEST(CudaKernelsTest, EveryConfigMatchesOracle) {
  SKIP_WITHOUT_GPU();
  absl::StatusOr<bool> wg = CudaDeviceHasWgmma(0);
  ASSERT_TRUE(wg.ok()) << wg.status();
  const uint64_t seed = FreshSeed();
  std::mt19937_64 pick(seed);
  struct Shape {
    int64_t m, n, k;
  };
  std::vector<Shape> shapes = {{1, 40, 200},   {3, 300, 333},  {8, 129, 1000}, {17, 200, 128},
                               {33, 77, 519},  {64, 256, 640}, {130, 300, 260}, {300, 180, 1100},
                               {257, 513, 40}, {2, 1, 1},
                               // More than one gemv pass of 32 k-tiles (36 k-tiles).
                               {16, 300, 4500}};
  if (QuickMode()) shapes = {{3, 300, 333}, {33, 77, 519}, {130, 300, 260}};
  const std::vector<CudaDType> x_types = {CudaDType::kF32, CudaDType::kF16, CudaDType::kBF16};
  const std::vector<CudaDType> y_types = {CudaDType::kF32, CudaDType::kF16, CudaDType::kBF16};
  const std::vector<Activation> acts = {Activation::kIdentity, Activation::kRelu,
                                        Activation::kGelu, Activation::kSilu};
  int ran = 0;
  int case_index = 0;
  for (const Shape& s : shapes) {
    for (ActivationQuant mode : {ActivationQuant::kNone, ActivationQuant::kInt8}) {
      for (CudaDType xt : x_types) {
        Case c;
        c.m = s.m;
        c.n = s.n;
        c.k = s.k;
        c.mode = mode;
        c.x_dtype = xt;
        c.y_dtype = y_types[case_index % 3];
        c.activation = acts[case_index % 4];
        c.bias = case_index % 2 == 0;
        c.granularity = case_index % 3 == 1 ? ScaleGranularity::kPerTensor : ScaleGranularity::kPerRow;
        // Aligned and unaligned strides (the latter forces the copy path).
        c.x_pad = (case_index % 4 == 3) ? 3 : (case_index % 4 == 1 ? 8 : 0);
        c.y_pad = case_index % 5 == 0 ? 5 : 0;
        c.split_k = 0;
        ++case_index;
        ran += RunCase(c, AllConfigs(), *wg, pick());
      }
    }
  }
  EXPECT_GT(ran, 0);
}

// Raw int32 accumulators of int8 mode are bit-identical to the oracle's.
TEST(CudaKernelsTest, Int8AccumulatorsAreBitIdentical) {
  SKIP_WITHOUT_GPU();
  absl::StatusOr<bool> wg = CudaDeviceHasWgmma(0);
  ASSERT_TRUE(wg.ok()) << wg.status();
  std::mt19937_64 pick(FreshSeed());
  std::vector<std::array<int64_t, 3>> shapes = {{1, 64, 4096}, {19, 333, 1111}, {200, 130, 517}};
  if (QuickMode()) shapes = {{19, 333, 1111}};
  for (const auto& s : shapes) {
    for (CudaDType xt : {CudaDType::kF32, CudaDType::kF16, CudaDType::kBF16}) {
      Case c{s[0], s[1], s[2], ActivationQuant::kInt8, xt, CudaDType::kS32, Activation::kIdentity,
             false, ScaleGranularity::kPerRow, 0, 0, 0};
      RunCase(c, AllConfigs(), *wg, pick());
    }
  }
}

// Forced split-K counts, including uneven ones, on every configuration.
TEST(CudaKernelsTest, SplitKIsDeterministicAndCorrect) {
  SKIP_WITHOUT_GPU();
  absl::StatusOr<bool> wg = CudaDeviceHasWgmma(0);
  ASSERT_TRUE(wg.ok()) << wg.status();
  std::mt19937_64 pick(FreshSeed());
  for (int split : {1, 3, 7}) {
    for (ActivationQuant mode : {ActivationQuant::kNone, ActivationQuant::kInt8}) {
      Case c{21, 200, 1000, mode, CudaDType::kF16, CudaDType::kF32, Activation::kIdentity, true,
             ScaleGranularity::kPerRow, 0, 0, split};
      RunCase(c, AllConfigs(), *wg, pick());
    }
  }
}

// Warp-specialized grids a little over one wave of this device's SMs, with
// partial last tiles in both directions (the last batch tile shifted back to
// end at M): whole waves of blocks followed by a
// few (the shape where session 7 tried splitting the last wave's tiles; see
// benchmarks/NOTES-kernels.md). Sized from the SM count.
TEST(CudaKernelsTest, WarpSpecializedMultiWaveGridsMatchOracle) {
  SKIP_WITHOUT_GPU();
  absl::StatusOr<bool> wg = CudaDeviceHasWgmma(0);
  ASSERT_TRUE(wg.ok()) << wg.status();
  if (!*wg) GTEST_SKIP() << "the ws configurations need sm_90a";
  int sms = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
  std::mt19937_64 pick(FreshSeed());
  int checked = 0;
  for (const CudaKernelConfig& cfg : CudaKernelConfigs()) {
    if (std::string_view(cfg.name).substr(0, 3) != "ws_") continue;
    // 3 batch tiles (the last one partial) x enough weight tiles for one
    // wave plus 5-7 tiles.
    const int64_t m = 3 * cfg.batch_rows - 5;
    const int64_t n = ((sms + 4) / 3 + 1) * cfg.weight_rows - 37;
    for (ActivationQuant mode : {ActivationQuant::kNone, ActivationQuant::kInt8}) {
      Case c{m, n, 1100, mode, CudaDType::kF16, CudaDType::kF32, Activation::kGelu, true,
             ScaleGranularity::kPerRow, 0, 0, 0};
      SCOPED_TRACE(std::string(cfg.name));
      checked += RunCase(c, {cfg.id}, true, pick());
      // Two batch tiles, the second shifted back to end at M so that it
      // repeats all but 7 of the first tile's rows, with K split 3 ways: the
      // rows both tiles store must agree after either tile's reduction.
      Case shifted{cfg.batch_rows + 7,
                   2 * cfg.weight_rows - 37,
                   1100,
                   mode,
                   CudaDType::kBF16,
                   CudaDType::kF16,
                   Activation::kSilu,
                   true,
                   ScaleGranularity::kPerRow,
                   0,
                   0,
                   3};
      checked += RunCase(shifted, {cfg.id}, true, pick());
    }
  }
  EXPECT_GT(checked, 0);
}

// NaN and infinite activations quantize as on the CPU (NaN -> -128, an
// infinite absmax -> scale 0), so int8 accumulators still match the oracle bit
// for bit, in every configuration (gemv, mma, wgmma, ws).
TEST(CudaKernelsTest, NonFiniteActivationsQuantizeAsOnTheCpu) {
  SKIP_WITHOUT_GPU();
  absl::StatusOr<bool> wg = CudaDeviceHasWgmma(0);
  ASSERT_TRUE(wg.ok()) << wg.status();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int64_t m = 130, n = 300, k = 1024;
  const PackedTernaryMatrix w = RandomWeights(rng, n, k, ScaleGranularity::kPerRow);
  absl::StatusOr<std::unique_ptr<CudaTernaryWeights>> dw =
      CudaTernaryWeights::Create(w.view(), nullptr, 0);
  ASSERT_TRUE(dw.ok()) << dw.status();
  HostInput in = MakeInput(rng, m, k, k, CudaDType::kF32, 3.0f);
  const float specials[] = {std::nanf(""), INFINITY, -INFINITY};
  for (int i = 0; i < 12; ++i) {
    const size_t at = static_cast<size_t>((i * 7919 + 13) % (m * k));
    in.values[at] = specials[i % 3];
    std::memcpy(in.bytes.data() + at * 4, &in.values[at], 4);
  }
  const std::vector<int32_t> want = OracleInt8Accumulators(in.values, m, k, w);
  absl::StatusOr<CudaBuffer> dx = CudaBuffer::Create(in.bytes.size(), 0);
  absl::StatusOr<CudaBuffer> dy = CudaBuffer::Create(want.size() * 4, 0);
  ASSERT_TRUE(dx.ok() && dy.ok());
  ASSERT_TRUE(dx->CopyFromHost(in.bytes.data(), in.bytes.size()).ok());
  for (int config : AllConfigs()) {
    if (config >= 0) {
      const CudaKernelConfig& cfg = CudaKernelConfigs()[config];
      if ((cfg.wgmma && !*wg) || !cfg.int8) continue;
    }
    SCOPED_TRACE(config < 0 ? std::string("auto") : CudaKernelConfigs()[config].name);
    CudaLinearArgs a;
    a.m = m;
    a.x = dx->data();
    a.x_dtype = CudaDType::kF32;
    a.weights = dw->get();
    a.act_quant = ActivationQuant::kInt8;
    a.y = dy->data();
    a.y_dtype = CudaDType::kS32;
    a.config = config;
    absl::StatusOr<CudaLaunchPlan> plan = CudaPlanLinear(a);
    ASSERT_TRUE(plan.ok()) << plan.status();
    absl::StatusOr<CudaBuffer> ws = CudaBuffer::Create(plan->workspace_bytes, 0);
    ASSERT_TRUE(ws.ok()) << ws.status();
    ASSERT_TRUE(ws->Fill(0).ok());
    a.workspace = ws->data();
    a.workspace_bytes = ws->bytes();
    ASSERT_TRUE(dy->Fill(0x7F).ok());
    ASSERT_TRUE(CudaTernaryLinear(a, nullptr).ok());
    EXPECT_EQ(AccumulatorMismatches(*dy, want), 0) << "of " << want.size() << " accumulators";
  }
}

// fp16 in, fp16 out, for CudaPlanLinear alone: x and y are never read or
// written, only their alignment is looked at.
CudaLinearArgs PlanOnlyArgs(const CudaTernaryWeights* weights, int64_t m, ActivationQuant q) {
  CudaLinearArgs a;
  a.m = m;
  a.x = reinterpret_cast<const void*>(uintptr_t{256});
  a.x_dtype = CudaDType::kF16;
  a.weights = weights;
  a.act_quant = q;
  a.y = reinterpret_cast<void*>(uintptr_t{256});
  a.y_dtype = CudaDType::kF16;
  return a;
}

// The one-block-per-SM gemv tiles stage up to 128 KB of x per block, more
// than sm_86 / sm_89 allow (99 KB): the automatic choice takes them only where
// sm_90a code runs. Planned here for a simulated Ampere device.
TEST(CudaKernelsTest, OffHopperSmallBatchesKeepTheTwoBlockGemvTiles) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(FreshSeed());
  const PackedTernaryMatrix w = RandomWeights(rng, 4096, 256, ScaleGranularity::kPerRow);
  absl::StatusOr<std::unique_ptr<CudaTernaryWeights>> dw =
      CudaTernaryWeights::Create(w.view(), nullptr, 0);
  ASSERT_TRUE(dw.ok()) << dw.status();
  for (const ActivationQuant q : {ActivationQuant::kNone, ActivationQuant::kInt8}) {
    for (int64_t m = 1; m <= 16; ++m) {
      absl::StatusOr<CudaLaunchPlan> plan =
          CudaPlanLinear(PlanOnlyArgs(dw->get(), m, q), /*device_sm_major=*/8, /*device_sms=*/84,
                         /*device_has_wgmma=*/false);
      ASSERT_TRUE(plan.ok()) << plan.status();
      const std::string name = CudaKernelConfigs()[plan->config].name;
      EXPECT_TRUE(name == "gemv_w16_b8" || name == "gemv_w32_b8")
          << "m = " << m << ", act_quant " << static_cast<int>(q) << ": " << name;
    }
  }
}

// From 257 to 1024 rows the automatic choice takes the ws batch width whose
// grid costs the fewest waves of blocks times width (AutoConfig's
// FewestWavesConfig). The case that made it: at N = 11008, 384 rows in 176-row
// tiles left a third batch tile of 32 rows, as slow as a full one (H200:
// 78.4 us fp16 against 50.1 with three full 128-row tiles). Planned for a
// simulated 132-SM Hopper device.
TEST(CudaKernelsTest, ManyRowsTakeTheBatchTileWithTheFewestWaves) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(FreshSeed());
  struct Case {
    int64_t n, m;
    const char* want;
  };
  const Case cases[] = {
      {11008, 320, "ws_w128_b128"},  // two waves either way, of narrower blocks
      {11008, 384, "ws_w128_b128"},  // 3 full tiles, not 176 + 176 + 32
      {11008, 512, "ws_w128_b176"},  // 258 blocks in 2 waves, not 344 in 3
      {11008, 768, "ws_w128_b128"}, {11008, 1024, "ws_w128_b176"},
      {4096, 320, "ws_w128_b96"},  // 128 blocks: one wave of 96-row tiles
      {4096, 384, "ws_w128_b96"},   {4096, 512, "ws_w128_b128"},
      {4096, 768, "ws_w128_b96"},   {4096, 1024, "ws_w128_b128"},
  };
  for (const int64_t n : {int64_t{4096}, int64_t{11008}}) {
    const PackedTernaryMatrix w = RandomWeights(rng, n, 256, ScaleGranularity::kPerRow);
    absl::StatusOr<std::unique_ptr<CudaTernaryWeights>> dw =
        CudaTernaryWeights::Create(w.view(), nullptr, 0);
    ASSERT_TRUE(dw.ok()) << dw.status();
    for (const Case& c : cases) {
      if (c.n != n) continue;
      for (const ActivationQuant q : {ActivationQuant::kNone, ActivationQuant::kInt8}) {
        absl::StatusOr<CudaLaunchPlan> plan = CudaPlanLinear(
            PlanOnlyArgs(dw->get(), c.m, q), /*device_sm_major=*/9, /*device_sms=*/132,
            /*device_has_wgmma=*/true);
        ASSERT_TRUE(plan.ok()) << plan.status();
        EXPECT_EQ(std::string(CudaKernelConfigs()[plan->config].name), c.want)
            << "n = " << n << ", m = " << c.m << ", act_quant " << static_cast<int>(q);
      }
    }
  }
}

// 65..128 rows at N = 4096: 128 x 64 tiles split in two, each pair reduced
// inside a cluster of 2 blocks, where that grid is one wave filling at least
// half the SMs (session 27). A split_k past the cluster limit of 8 is refused
// by name. Planned for simulated Hopper devices.
TEST(CudaKernelsTest, OneWaveOfTwoBlockClustersTakesTheClusterReducedTile) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(FreshSeed());
  std::unique_ptr<CudaTernaryWeights> by_n[2];
  const int64_t ns[2] = {4096, 11008};
  for (int i = 0; i < 2; ++i) {
    const PackedTernaryMatrix w = RandomWeights(rng, ns[i], 1024, ScaleGranularity::kPerRow);
    absl::StatusOr<std::unique_ptr<CudaTernaryWeights>> dw =
        CudaTernaryWeights::Create(w.view(), nullptr, 0);
    ASSERT_TRUE(dw.ok()) << dw.status();
    by_n[i] = *std::move(dw);
  }
  struct Case {
    int n_index;
    int64_t m;
    int sms;
    const char* want;
    int want_split;
  };
  const Case cases[] = {
      {0, 128, 132, "ws_w128_b64_cs", 2},
      {0, 96, 132, "ws_w128_b64_cs", 2},  // 64 + 32 rows: the same grid
      {0, 65, 132, "ws_w128_b64_cs", 2},
      {0, 64, 132, "ws_w128_b32", 2},   // one batch tile: 64 blocks split by the global rule
      {0, 128, 120, "ws_w128_b32", 1},  // 128 blocks do not fit one wave of 120 SMs
      {1, 128, 132, "ws_w192_b64", 1},  // N = 11008: 344 blocks
  };
  for (const Case& c : cases) {
    for (const ActivationQuant q : {ActivationQuant::kNone, ActivationQuant::kInt8}) {
      absl::StatusOr<CudaLaunchPlan> plan =
          CudaPlanLinear(PlanOnlyArgs(by_n[c.n_index].get(), c.m, q), /*device_sm_major=*/9, c.sms,
                         /*device_has_wgmma=*/true);
      ASSERT_TRUE(plan.ok()) << plan.status();
      const std::string where =
          "n = " + std::to_string(ns[c.n_index]) + ", m = " + std::to_string(c.m) +
          ", sms = " + std::to_string(c.sms) + ", act_quant " + std::to_string(static_cast<int>(q));
      EXPECT_EQ(std::string(CudaKernelConfigs()[plan->config].name), c.want) << where;
      EXPECT_EQ(plan->split_k, c.want_split) << where;
    }
  }
  int cs = -1;
  for (const CudaKernelConfig& cfg : CudaKernelConfigs()) {
    if (cfg.name == "ws_w128_b64_cs") cs = cfg.id;
  }
  ASSERT_GE(cs, 0);
  CudaLinearArgs a = PlanOnlyArgs(by_n[0].get(), 128, ActivationQuant::kNone);
  a.config = cs;
  a.split_k = 8;  // 8 k-tiles: the most a cluster holds
  absl::StatusOr<CudaLaunchPlan> plan = CudaPlanLinear(a, 9, 132, true);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->split_k, 8);
  const PackedTernaryMatrix deep = RandomWeights(rng, 256, 4096, ScaleGranularity::kPerRow);
  absl::StatusOr<std::unique_ptr<CudaTernaryWeights>> dd =
      CudaTernaryWeights::Create(deep.view(), nullptr, 0);
  ASSERT_TRUE(dd.ok()) << dd.status();
  a = PlanOnlyArgs(dd->get(), 128, ActivationQuant::kNone);
  a.config = cs;
  a.split_k = 9;
  plan = CudaPlanLinear(a, 9, 132, true);
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string message(plan.status().message());
  EXPECT_NE(message.find("cluster of at most 8"), std::string::npos) << message;
}

// A server runs every layer and batch size through one workspace. An int8
// call without split-K (its quantized activations in the workspace) followed
// by a split-K call must still sum the right partials: the split-K counters
// live where nothing else writes (the first layout put the activations of
// unsplit calls over them, and the next split-K call returned garbage).
TEST(CudaKernelsTest, OneWorkspaceServesUnsplitAndSplitCallsInTurn) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int64_t n = 200, k = 1000;
  const PackedTernaryMatrix w = RandomWeights(rng, n, k, ScaleGranularity::kPerRow);
  absl::StatusOr<std::unique_ptr<CudaTernaryWeights>> dw =
      CudaTernaryWeights::Create(w.view(), nullptr, 0);
  ASSERT_TRUE(dw.ok()) << dw.status();
  int split_config = -1;
  for (const CudaKernelConfig& cfg : CudaKernelConfigs()) {
    if (cfg.name == "mma_w64_b32") split_config = cfg.id;
  }
  ASSERT_GE(split_config, 0);

  struct Call {
    int64_t m;
    int config;
    int split_k;
  };
  // Unsplit (gemv / large tile) and split calls alternating, twice over.
  const std::vector<Call> calls = {{1, kCudaAutoConfig, 0},  {40, split_config, 3},
                                   {300, kCudaAutoConfig, 1}, {40, split_config, 3},
                                   {7, kCudaAutoConfig, 0},  {33, split_config, 5}};
  std::vector<CudaLinearArgs> args(calls.size());
  size_t ws_bytes = 0;
  for (size_t i = 0; i < calls.size(); ++i) {
    CudaLinearArgs& a = args[i];
    a.m = calls[i].m;
    a.x = reinterpret_cast<const void*>(uintptr_t{256});
    a.x_dtype = CudaDType::kF32;
    a.weights = dw->get();
    a.act_quant = ActivationQuant::kInt8;
    a.y = reinterpret_cast<void*>(uintptr_t{256});
    a.y_dtype = CudaDType::kS32;
    a.config = calls[i].config;
    a.split_k = calls[i].split_k;
    absl::StatusOr<size_t> b = CudaLinearWorkspaceBytes(a);
    ASSERT_TRUE(b.ok()) << b.status();
    ws_bytes = std::max(ws_bytes, *b);
  }
  absl::StatusOr<CudaBuffer> ws = CudaBuffer::Create(ws_bytes, 0);
  ASSERT_TRUE(ws.ok()) << ws.status();
  ASSERT_TRUE(ws->Fill(0).ok());
  for (size_t i = 0; i < calls.size(); ++i) {
    SCOPED_TRACE("call " + std::to_string(i) + ": m=" + std::to_string(calls[i].m));
    const int64_t m = calls[i].m;
    const HostInput in = MakeInput(rng, m, k, k, CudaDType::kF32, 3.0f);
    const std::vector<int32_t> want = OracleInt8Accumulators(in.values, m, k, w);
    absl::StatusOr<CudaBuffer> dx = CudaBuffer::Create(in.bytes.size(), 0);
    absl::StatusOr<CudaBuffer> dy = CudaBuffer::Create(want.size() * 4, 0);
    ASSERT_TRUE(dx.ok() && dy.ok());
    ASSERT_TRUE(dx->CopyFromHost(in.bytes.data(), in.bytes.size()).ok());
    ASSERT_TRUE(dy->Fill(0x7F).ok());
    CudaLinearArgs a = args[i];
    a.x = dx->data();
    a.y = dy->data();
    a.workspace = ws->data();
    a.workspace_bytes = ws->bytes();
    ASSERT_TRUE(CudaTernaryLinear(a, nullptr).ok());
    EXPECT_EQ(AccumulatorMismatches(*dy, want), 0) << "of " << want.size() << " accumulators";
  }
}

// Programmatic dependent launch (CudaLinearArgs::overlap_previous_kernel): a
// stack of small-M layers on one stream, layer i's fp16 output being layer
// i + 1's input, nothing synchronizing them. With the flag each launch may
// start while the previous layer still runs; a launch that read x, or wrote
// y or the shared workspace, before waiting for it would see the poison
// (fp16 NaN) still in its input buffer, or overwrite the previous layer's
// prepared activations under it. Checked per layer against the oracle run on
// that layer's actual input, and bit for bit against the same stack launched
// plainly and replayed as a captured CUDA graph (programmatic edges). Every
// configuration runs: the gemv and warp-specialized (ws) ones
// overlap, the others must launch plainly although the flag is set (they do
// not wait). Odd widths exercise both the in-place fp16 path (K % 8 == 0)
// and the preparation launch; 70 rows give the ws tiles two batch tiles and
// split-K scratch shared by consecutive layers.
TEST(CudaKernelsTest, DependentLaunchStackMatchesPlainLaunchesAndOracle) {
  SKIP_WITHOUT_GPU();
  absl::StatusOr<bool> wg = CudaDeviceHasWgmma(0);
  ASSERT_TRUE(wg.ok()) << wg.status();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);

  // Layer i maps width dims[i] to dims[i + 1].
  const std::vector<int64_t> dims = {520, 300, 1000, 777, 520, 300};
  const int layers = static_cast<int>(dims.size()) - 1;
  const int64_t max_m = 70;
  std::vector<PackedTernaryMatrix> w;
  std::vector<std::vector<float>> bias;
  std::vector<std::unique_ptr<CudaTernaryWeights>> dw;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(-0.5f, 0.5f);
  for (int l = 0; l < layers; ++l) {
    const int64_t n = dims[l + 1], k = dims[l];
    // Weights ~ N(0, 1/k): outputs stay O(1) through the stack (fp16 would
    // overflow within a few layers at unit variance).
    std::vector<float> wf(static_cast<size_t>(n * k));
    for (float& v : wf) v = normal(rng) / std::sqrt(static_cast<float>(k));
    absl::StatusOr<PackedTernaryMatrix> packed =
        QuantizeAndPack(wf, n, k, ScaleGranularity::kPerRow);
    ASSERT_TRUE(packed.ok()) << packed.status();
    w.push_back(*std::move(packed));
    bias.emplace_back(static_cast<size_t>(n));
    for (float& b : bias.back()) b = uniform(rng);
    absl::StatusOr<std::unique_ptr<CudaTernaryWeights>> d =
        CudaTernaryWeights::Create(w.back().view(), bias.back().data(), 0);
    ASSERT_TRUE(d.ok()) << d.status();
    dw.push_back(*std::move(d));
  }
  // acts[0] is the input, acts[l + 1] layer l's output: [max_m, dims[l]] fp16.
  std::vector<CudaBuffer> acts;
  for (int64_t width : dims) {
    absl::StatusOr<CudaBuffer> b = CudaBuffer::Create(static_cast<size_t>(max_m * width) * 2, 0);
    ASSERT_TRUE(b.ok()) << b.status();
    acts.push_back(*std::move(b));
  }
  absl::StatusOr<CudaStream> stream = CudaStream::Create(0);
  ASSERT_TRUE(stream.ok()) << stream.status();

  std::vector<int> configs = AllConfigs();
  if (QuickMode()) configs = {kCudaAutoConfig};
  int overlapping_runs = 0;
  for (ActivationQuant mode : {ActivationQuant::kNone, ActivationQuant::kInt8}) {
    for (int64_t m : {1, 5, 16, 70}) {
      const HostInput in = MakeInput(rng, m, dims[0], dims[0], CudaDType::kF16, 0.5f);
      for (int config : configs) {
        if (config >= 0) {
          const CudaKernelConfig& cfg = CudaKernelConfigs()[config];
          if (cfg.wgmma && !*wg) continue;
          if (mode == ActivationQuant::kNone ? !cfg.fp : !cfg.int8) continue;
        }
        SCOPED_TRACE("mode=" + std::string(ActivationQuantName(mode)) +
                     " m=" + std::to_string(m) + " config=" +
                     (config < 0 ? std::string("auto") : CudaKernelConfigs()[config].name));
        std::vector<CudaLinearArgs> args(static_cast<size_t>(layers));
        size_t ws_bytes = 0;
        bool any_overlap = false;
        for (int l = 0; l < layers; ++l) {
          CudaLinearArgs& a = args[static_cast<size_t>(l)];
          a.m = m;
          a.x = acts[static_cast<size_t>(l)].data();
          a.x_dtype = CudaDType::kF16;
          a.weights = dw[static_cast<size_t>(l)].get();
          a.act_quant = mode;
          a.activation = l % 2 == 0 ? Activation::kRelu : Activation::kIdentity;
          a.y = acts[static_cast<size_t>(l) + 1].data();
          a.y_dtype = CudaDType::kF16;
          a.config = config;
          a.overlap_previous_kernel = true;
          absl::StatusOr<CudaLaunchPlan> plan = CudaPlanLinear(a);
          ASSERT_TRUE(plan.ok()) << plan.status();
          // Hopper (the only place the wgmma code runs) honors the flag.
          if (*wg) {
            EXPECT_TRUE(plan->overlap_previous_kernel);
          }
          any_overlap |= plan->overlap_previous_kernel &&
                         (plan->prepare_activations || !CudaKernelConfigs()[plan->config].split_k);
          ws_bytes = std::max(ws_bytes, plan->workspace_bytes);
        }
        overlapping_runs += any_overlap;
        // One workspace for the whole stack, as a server uses it: the
        // preparation launch of layer l + 1 overwrites the activations that
        // layer l's GEMM reads.
        absl::StatusOr<CudaBuffer> ws = CudaBuffer::Create(ws_bytes, 0);
        ASSERT_TRUE(ws.ok()) << ws.status();
        ASSERT_TRUE(ws->Fill(0).ok());
        for (CudaLinearArgs& a : args) {
          a.workspace = ws->data();
          a.workspace_bytes = ws->bytes();
        }

        enum class Launch { kPlain, kOverlap, kOverlapGraph };
        // Poisons every layer output, runs the stack, returns all outputs.
        auto run = [&](Launch launch, std::vector<std::vector<uint16_t>>* out) -> absl::Status {
          for (int l = 1; l <= layers; ++l) {
            TEST_RETURN_IF_ERROR(acts[static_cast<size_t>(l)].Fill(0x7F, stream->get()));
          }
          // Stream-ordered (a pageable cudaMemcpy may still be in flight when
          // it returns, and this stream does not wait for the legacy one).
          TEST_RETURN_IF_ERROR(
              CudaMemcpyAsync(acts[0].data(), in.bytes.data(), in.bytes.size(), stream->get()));
          auto enqueue = [&]() -> absl::Status {
            for (CudaLinearArgs a : args) {
              a.overlap_previous_kernel = launch != Launch::kPlain;
              TEST_RETURN_IF_ERROR(CudaTernaryLinear(a, stream->get()));
            }
            return absl::OkStatus();
          };
          if (launch == Launch::kOverlapGraph) {
            TEST_RETURN_IF_ERROR(stream->Synchronize());  // the input is in place
            TEST_RETURN_IF_ERROR(RunAsCapturedGraph(stream->get(), enqueue));
          } else {
            TEST_RETURN_IF_ERROR(enqueue());
          }
          TEST_RETURN_IF_ERROR(stream->Synchronize());
          out->assign(static_cast<size_t>(layers) + 1, {});
          for (int l = 0; l <= layers; ++l) {
            std::vector<uint16_t>& o = (*out)[static_cast<size_t>(l)];
            o.resize(static_cast<size_t>(m * dims[static_cast<size_t>(l)]));
            TEST_RETURN_IF_ERROR(acts[static_cast<size_t>(l)].CopyToHost(o.data(), o.size() * 2));
          }
          return absl::OkStatus();
        };
        std::vector<std::vector<uint16_t>> plain, overlap, graph;
        for (auto [launch, out] : {std::pair{Launch::kPlain, &plain},
                                   std::pair{Launch::kOverlap, &overlap},
                                   std::pair{Launch::kOverlapGraph, &graph}}) {
          const absl::Status st = run(launch, out);
          ASSERT_TRUE(st.ok()) << "launch " << static_cast<int>(launch) << ": " << st;
        }

        for (int l = 0; l < layers; ++l) {
          SCOPED_TRACE("layer " + std::to_string(l));
          const std::vector<uint16_t>& got = overlap[static_cast<size_t>(l) + 1];
          // Same kernels, same order of operations: identical bits.
          EXPECT_TRUE(got == plain[static_cast<size_t>(l) + 1]) << "overlapped != plain";
          EXPECT_TRUE(graph[static_cast<size_t>(l) + 1] == plain[static_cast<size_t>(l) + 1])
              << "graph != plain";
          // The oracle on the input this layer actually received.
          const int64_t n = dims[static_cast<size_t>(l) + 1], k = dims[static_cast<size_t>(l)];
          std::vector<float> x(static_cast<size_t>(m * k));
          for (size_t i = 0; i < x.size(); ++i) {
            x[i] = FromHalfBits(overlap[static_cast<size_t>(l)][i]);
          }
          std::vector<float> ref(static_cast<size_t>(m * n));
          TernaryGemmArgs ra;
          ra.m = m;
          ra.x = x.data();
          ra.weight = w[static_cast<size_t>(l)].view();
          ra.bias = bias[static_cast<size_t>(l)].data();
          ra.act_quant = mode;
          ra.activation = args[static_cast<size_t>(l)].activation;
          ra.y = ref.data();
          ASSERT_TRUE(ReferenceTernaryGemm(ra).ok());
          int64_t bad = 0;
          double err2 = 0.0, ref2 = 0.0;
          for (size_t i = 0; i < ref.size(); ++i) {
            const float g = FromHalfBits(got[i]);
            if (!std::isfinite(g)) {
              ++bad;
              continue;
            }
            if (mode == ActivationQuant::kInt8) {
              // Identity/ReLU outputs are the oracle's, rounded to fp16.
              bad += g != RoundTo(CudaDType::kF16, ref[i]);
            } else {
              err2 += static_cast<double>(g - ref[i]) * (g - ref[i]);
              ref2 += static_cast<double>(ref[i]) * ref[i];
            }
          }
          EXPECT_EQ(bad, 0) << "of " << ref.size() << " outputs";
          if (mode == ActivationQuant::kNone) {
            // As EveryConfigMatchesOracle: 2e-3 plus the fp16 output rounding.
            EXPECT_LT(std::sqrt(err2 / std::max(ref2, 1e-300)), 2e-3 + 5e-4);
          }
        }
      }
    }
  }
  if (*wg) {
    EXPECT_GT(overlapping_runs, 0);
  }
}

class CudaErrorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HasGpu()) GTEST_SKIP() << "no CUDA device";
    std::mt19937_64 rng(FreshSeed());
    packed_ = RandomWeights(rng, 64, 256, ScaleGranularity::kPerRow);
    auto w = CudaTernaryWeights::Create(packed_.view(), nullptr, 0);
    ASSERT_TRUE(w.ok()) << w.status();
    weights_ = *std::move(w);
    auto x = CudaBuffer::Create(4 * 256 * 4, 0);
    auto y = CudaBuffer::Create(4 * 64 * 4, 0);
    ASSERT_TRUE(x.ok() && y.ok());
    x_ = *std::move(x);
    y_ = *std::move(y);
    args_.m = 4;
    args_.x = x_.data();
    args_.x_dtype = CudaDType::kF16;
    args_.weights = weights_.get();
    args_.y = y_.data();
  }
  PackedTernaryMatrix packed_;
  std::unique_ptr<CudaTernaryWeights> weights_;
  CudaBuffer x_, y_;
  CudaLinearArgs args_;
};

TEST_F(CudaErrorsTest, BadArgumentsAreInvalidArgument) {
  CudaLinearArgs a = args_;
  a.weights = nullptr;
  EXPECT_EQ(CudaTernaryLinear(a, nullptr).code(), absl::StatusCode::kInvalidArgument);
  a = args_;
  a.y_dtype = CudaDType::kS32;  // needs int8
  EXPECT_EQ(CudaTernaryLinear(a, nullptr).code(), absl::StatusCode::kInvalidArgument);
  a = args_;
  a.x_dtype = CudaDType::kS32;
  EXPECT_EQ(CudaTernaryLinear(a, nullptr).code(), absl::StatusCode::kInvalidArgument);
  a = args_;
  a.x_stride = 100;  // < k
  EXPECT_EQ(CudaTernaryLinear(a, nullptr).code(), absl::StatusCode::kInvalidArgument);
  a = args_;
  a.config = 1000;
  EXPECT_EQ(CudaTernaryLinear(a, nullptr).code(), absl::StatusCode::kInvalidArgument);
  a = args_;
  a.x = nullptr;
  EXPECT_EQ(CudaTernaryLinear(a, nullptr).code(), absl::StatusCode::kInvalidArgument);
  a = args_;
  a.m = -1;
  EXPECT_EQ(CudaTernaryLinear(a, nullptr).code(), absl::StatusCode::kInvalidArgument);
  a = args_;
  a.act_quant = ActivationQuant::kInt8;  // needs a workspace
  const absl::Status st = CudaTernaryLinear(a, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("workspace"), std::string_view::npos) << st;
  a = args_;
  a.m = 0;  // nothing to do
  EXPECT_TRUE(CudaTernaryLinear(a, nullptr).ok());
}

TEST_F(CudaErrorsTest, MissingLayoutAndUnrunnableConfigAreClear) {
  CudaTernaryWeights::Options only_fp;
  only_fp.int8_layout = false;
  auto w = CudaTernaryWeights::Create(packed_.view(), nullptr, 0, only_fp);
  ASSERT_TRUE(w.ok());
  CudaLinearArgs a = args_;
  a.weights = w->get();
  a.act_quant = ActivationQuant::kInt8;
  EXPECT_EQ(CudaTernaryLinear(a, nullptr).code(), absl::StatusCode::kInvalidArgument);

  for (const CudaKernelConfig& c : CudaKernelConfigs()) {
    if (c.fp) continue;
    a = args_;  // none mode on an int8-only configuration
    a.config = c.id;
    const absl::StatusCode code = CudaTernaryLinear(a, nullptr).code();
    EXPECT_TRUE(code == absl::StatusCode::kFailedPrecondition) << c.name;
  }
  for (const CudaKernelConfig& c : CudaKernelConfigs()) {
    if (c.split_k) continue;
    a = args_;
    a.config = c.id;
    a.split_k = 2;
    EXPECT_EQ(CudaTernaryLinear(a, nullptr).code(), absl::StatusCode::kInvalidArgument) << c.name;
  }
  absl::StatusOr<bool> wg = CudaDeviceHasWgmma(0);
  ASSERT_TRUE(wg.ok());
  if (!*wg) {
    for (const CudaKernelConfig& c : CudaKernelConfigs()) {
      if (!c.wgmma) continue;
      a = args_;
      a.config = c.id;
      EXPECT_EQ(CudaTernaryLinear(a, nullptr).code(), absl::StatusCode::kFailedPrecondition);
    }
  }
}

TEST_F(CudaErrorsTest, BadWeightsAreRejected) {
  PackedTernaryMatrix bad = packed_;
  bad.words[3] = -1;  // code 3 is not a ternary code
  EXPECT_EQ(CudaTernaryWeights::Create(bad.view(), nullptr, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<float> bias(64, 0.0f);
  bias[7] = std::nanf("");
  EXPECT_EQ(CudaTernaryWeights::Create(packed_.view(), bias.data(), 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CudaTernaryWeights::Create(packed_.view(), nullptr, 999).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace bitnet

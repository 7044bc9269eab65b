// Unit tests of the gRPC service helpers that need no server: tensor
// decoding/encoding, status conversion, admin token and path confinement,
// flag parsing and validation, metric names, log formatting.
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/metrics/metrics.h"
#include "server/host/half.h"
#include "server/service/admin_auth.h"
#include "server/service/event_log.h"
#include "server/service/grpc_status.h"
#include "server/service/server.h"
#include "server/service/tensor_codec.h"

namespace bitnet {
namespace {

using ::testing::HasSubstr;

v1::Tensor Fp32Tensor(int64_t rows, int64_t cols, const std::vector<float>& v) {
  v1::Tensor t;
  t.set_dtype(v1::DTYPE_FP32);
  t.add_shape(rows);
  t.add_shape(cols);
  t.set_data(std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4));
  return t;
}

InputExpectation Expect(int64_t features, int64_t max_rows) {
  InputExpectation e;
  e.features = features;
  e.max_rows = max_rows;
  e.model_description = "model \"m\" version 1";
  return e;
}

TEST(TensorCodecTest, DecodesFp32Fp16Bf16) {
  const std::vector<float> values = {1.0f, -2.5f, 0.333333f, 65504.0f, -0.0f, 1e-3f};
  auto fp32 = DecodeInput(Fp32Tensor(2, 3, values), Expect(3, 4));
  ASSERT_TRUE(fp32.ok()) << fp32.status();
  EXPECT_EQ(*fp32, values);

  for (v1::DType dtype : {v1::DTYPE_FP16, v1::DTYPE_BF16}) {
    v1::Tensor t;
    t.set_dtype(dtype);
    t.add_shape(2);
    t.add_shape(3);
    std::string data(values.size() * 2, '\0');
    std::vector<float> expected;
    for (size_t i = 0; i < values.size(); ++i) {
      const uint16_t bits = dtype == v1::DTYPE_FP16 ? FloatToHalf(values[i])
                                                    : FloatToBFloat16(values[i]);
      std::memcpy(data.data() + 2 * i, &bits, 2);
      expected.push_back(dtype == v1::DTYPE_FP16 ? HalfToFloat(bits)
                                                 : BFloat16ToFloat(bits));
    }
    t.set_data(data);
    auto decoded = DecodeInput(t, Expect(3, 4));
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, expected) << v1::DType_Name(dtype);
  }
}

TEST(TensorCodecTest, RejectsBadTensorsNamingFieldAndExpectation) {
  const std::vector<float> six(6, 1.0f);
  struct Case {
    std::string name;
    v1::Tensor tensor;
    std::string message;
  };
  std::vector<Case> cases;
  {
    v1::Tensor t = Fp32Tensor(2, 3, six);
    t.set_dtype(v1::DTYPE_UNSPECIFIED);
    cases.push_back({"dtype", t, "input.dtype: DTYPE_UNSPECIFIED; expected DTYPE_FP32"});
  }
  cases.push_back({"cols", Fp32Tensor(3, 2, six),
                   "input.shape: [3, 2]; expected [rows, 3] (input_features of model \"m\" version 1)"});
  {
    v1::Tensor t = Fp32Tensor(2, 3, six);
    t.add_shape(1);
    cases.push_back({"rank", t, "input.shape: [2, 3, 1]; expected [rows, 3]"});
  }
  cases.push_back({"zero rows", Fp32Tensor(0, 3, {}),
                   "input.shape[0]: 0 rows; expected at least 1"});
  cases.push_back({"too many rows", Fp32Tensor(5, 3, std::vector<float>(15, 1.0f)),
                   "input.shape[0]: 5 rows; expected at most 4"});
  {
    v1::Tensor t = Fp32Tensor(2, 3, six);
    t.mutable_data()->pop_back();
    cases.push_back({"bytes", t, "input.data: 23 bytes; expected 24"});
  }
  {
    std::vector<float> v = six;
    v[4] = std::numeric_limits<float>::quiet_NaN();
    cases.push_back({"nan", Fp32Tensor(2, 3, v),
                     "input.data: element [1, 1] is NaN; expected finite values"});
    v[4] = 1;
    v[2] = -std::numeric_limits<float>::infinity();
    cases.push_back({"inf", Fp32Tensor(2, 3, v),
                     "input.data: element [0, 2] is infinite"});
  }
  for (const Case& c : cases) {
    auto decoded = DecodeInput(c.tensor, Expect(3, 4));
    EXPECT_EQ(decoded.status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_THAT(std::string(decoded.status().message()), HasSubstr(c.message)) << c.name;
  }
}

TEST(TensorCodecTest, EncodesOutputDtypes) {
  const std::vector<float> values = {1.0f, -3.14159f, 1e-8f, 70000.0f};
  v1::Tensor t;
  ASSERT_TRUE(EncodeOutput(values.data(), 2, 2, v1::DTYPE_UNSPECIFIED, &t).ok());
  EXPECT_EQ(t.dtype(), v1::DTYPE_FP32);
  EXPECT_THAT(t.shape(), ::testing::ElementsAre(2, 2));
  ASSERT_EQ(t.data().size(), 16u);
  EXPECT_EQ(std::memcmp(t.data().data(), values.data(), 16), 0);

  ASSERT_TRUE(EncodeOutput(values.data(), 2, 2, v1::DTYPE_FP16, &t).ok());
  ASSERT_EQ(t.data().size(), 8u);
  for (int i = 0; i < 4; ++i) {
    uint16_t bits;
    std::memcpy(&bits, t.data().data() + 2 * i, 2);
    EXPECT_EQ(bits, FloatToHalf(values[i])) << i;  // 70000 -> +inf in fp16
  }
  ASSERT_TRUE(EncodeOutput(values.data(), 2, 2, v1::DTYPE_BF16, &t).ok());
  for (int i = 0; i < 4; ++i) {
    uint16_t bits;
    std::memcpy(&bits, t.data().data() + 2 * i, 2);
    EXPECT_EQ(bits, FloatToBFloat16(values[i])) << i;
  }
  EXPECT_FALSE(EncodeOutput(values.data(), 2, 2, static_cast<v1::DType>(9), &t).ok());
}

TEST(TensorCodecTest, ValidateInputViewsTheBytesWithoutCopying) {
  const std::vector<float> values = {1.0f, -2.5f, 0.5f, 3.0f, 0.0f, 8.0f};
  std::string data(values.size() * 2, '\0');
  for (size_t i = 0; i < values.size(); ++i) {
    const uint16_t bits = FloatToHalf(values[i]);
    std::memcpy(data.data() + 2 * i, &bits, 2);
  }
  v1::Tensor t;
  t.set_dtype(v1::DTYPE_FP16);
  t.add_shape(2);
  t.add_shape(3);
  // The bytes may live outside the tensor (InferStream moves them out).
  auto in = ValidateInput(t, data, Expect(3, 4));
  ASSERT_TRUE(in.ok()) << in.status();
  EXPECT_EQ(in->data, data.data());
  EXPECT_EQ(in->dtype, ElementType::kF16);
  EXPECT_EQ(in->rows, 2);
  // Non-finite values are found on the bits, with the same message.
  const uint16_t nan = 0x7e00;
  std::memcpy(data.data() + 2 * 4, &nan, 2);
  auto bad = ValidateInput(t, data, Expect(3, 4));
  EXPECT_THAT(std::string(bad.status().message()),
              HasSubstr("input.data: element [1, 1] is NaN; expected finite values"));
}

TEST(TensorCodecTest, EncodesFromHalfValues) {
  const std::vector<float> values = {1.0f, -3.14159f, 1e-8f, 70000.0f};
  std::vector<uint16_t> halves(values.size());
  for (size_t i = 0; i < values.size(); ++i) halves[i] = FloatToHalf(values[i]);
  v1::Tensor t;
  // fp16 values, fp16 wanted: the same bits.
  ASSERT_TRUE(EncodeOutput(halves.data(), ElementType::kF16, 2, 2, v1::DTYPE_FP16, &t).ok());
  ASSERT_EQ(t.data().size(), 8u);
  EXPECT_EQ(std::memcmp(t.data().data(), halves.data(), 8), 0);
  // fp16 values, fp32 wanted: widened exactly.
  ASSERT_TRUE(EncodeOutput(halves.data(), ElementType::kF16, 2, 2, v1::DTYPE_FP32, &t).ok());
  ASSERT_EQ(t.data().size(), 16u);
  for (int i = 0; i < 4; ++i) {
    float f;
    std::memcpy(&f, t.data().data() + 4 * i, 4);
    EXPECT_EQ(f, HalfToFloat(halves[i])) << i;
  }
}

TEST(GrpcStatusTest, KeepsCodeAndMessage) {
  const grpc::Status s = ToGrpcStatus(absl::ResourceExhaustedError("queue full: 10 rows"));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(s.error_message(), "queue full: 10 rows");
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_EQ(ToGrpcStatus(absl::UnauthenticatedError("x")).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(GrpcCodeName(grpc::StatusCode::DEADLINE_EXCEEDED), "DEADLINE_EXCEEDED");
  EXPECT_EQ(GrpcCodeName(grpc::StatusCode::OK), "OK");
}

TEST(AdminAuthTest, TokenChecks) {
  const std::string token = "0123456789abcdef0123";
  EXPECT_EQ(CheckAdminToken("", true, "Bearer " + token).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(CheckAdminToken("", true, "x").message()),
              HasSubstr("--admin_token_file"));
  EXPECT_EQ(CheckAdminToken(token, false, "").code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(CheckAdminToken(token, true, "Bearer wrong").code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(CheckAdminToken(token, true, token).code(),  // no "Bearer "
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(CheckAdminToken(token, true, "Bearer " + token.substr(0, 19)).code(),
            absl::StatusCode::kPermissionDenied);  // a prefix is not the token
  EXPECT_EQ(CheckAdminToken(token, true, "Bearer " + token + "x").code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(CheckAdminToken(token, true, "Bearer " + token).ok());
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "ab"));
  EXPECT_FALSE(ConstantTimeEquals("", "a"));
}

TEST(AdminAuthTest, ClientCertificateNamesOrToken) {
  const std::string token = "0123456789abcdef0123";
  const std::vector<std::string> admins = {"bitnet-ops", "spiffe://corp/ops"};
  const std::vector<std::string> none;
  // A certificate naming an admin identity (CN or SAN) needs no token.
  EXPECT_TRUE(CheckAdminAccess("", admins, {"bitnet-ops"}, false, "").ok());
  EXPECT_TRUE(CheckAdminAccess("", admins, {"client", "spiffe://corp/ops"}, false, "").ok());
  EXPECT_TRUE(CheckAdminAccess(token, admins, {"bitnet-ops"}, true, "Bearer wrong").ok());
  // Anyone else: the token decides when there is one.
  EXPECT_TRUE(CheckAdminAccess(token, admins, {"client"}, true, "Bearer " + token).ok());
  EXPECT_EQ(CheckAdminAccess(token, admins, {"client"}, false, "").code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(CheckAdminAccess(token, admins, {"client"}, true, "Bearer wrong").code(),
            absl::StatusCode::kPermissionDenied);
  // Certificates only: no identity is UNAUTHENTICATED, another one is
  // PERMISSION_DENIED naming it; a token is no use.
  EXPECT_EQ(CheckAdminAccess("", admins, none, true, "Bearer " + token).code(),
            absl::StatusCode::kUnauthenticated);
  const absl::Status other = CheckAdminAccess("", admins, {"client"}, false, "");
  EXPECT_EQ(other.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(other.message()), HasSubstr("\"client\""));
  EXPECT_EQ(CheckAdminAccess("", admins, {"bitnet-ops2"}, false, "").code(),
            absl::StatusCode::kPermissionDenied);  // exact names only
  // Neither configured: disabled, and the message says how to enable.
  const absl::Status off = CheckAdminAccess("", none, {"bitnet-ops"}, false, "");
  EXPECT_EQ(off.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(off.message()), HasSubstr("--admin_client_names"));
  // Token only: as CheckAdminToken, whatever the certificate says.
  EXPECT_EQ(CheckAdminAccess(token, none, {"bitnet-ops"}, false, "").code(),
            absl::StatusCode::kUnauthenticated);
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl = ::testing::TempDir() + "/bitnet_service_test_XXXXXX";
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

TEST(AdminAuthTest, ReadsTokenFile) {
  TempDir dir;
  WriteText(dir.path() + "/short", "tooshort\n");
  WriteText(dir.path() + "/good", "  0123456789abcdef0123\n");
  EXPECT_EQ(ReadAdminToken(dir.path() + "/short").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadAdminToken(dir.path() + "/missing").status().code(),
            absl::StatusCode::kNotFound);
  auto token = ReadAdminToken(dir.path() + "/good");
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(*token, "0123456789abcdef0123");
}

TEST(AdminAuthTest, ModelPathsStayInsideTheRepository) {
  TempDir outside;
  TempDir repo;
  namespace fs = std::filesystem;
  fs::create_directories(repo.path() + "/sub");
  WriteText(repo.path() + "/sub/model.safetensors", "x");
  WriteText(outside.path() + "/secret.safetensors", "x");
  fs::create_symlink(outside.path() + "/secret.safetensors", repo.path() + "/link.safetensors");
  fs::create_directory_symlink(outside.path(), repo.path() + "/linkdir");
  fs::create_symlink(repo.path() + "/sub/model.safetensors", repo.path() + "/inner_link");

  auto ok = ResolveModelPath(repo.path(), "sub/model.safetensors");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, fs::canonical(repo.path() + "/sub/model.safetensors").string());
  EXPECT_TRUE(ResolveModelPath(repo.path(), "inner_link").ok());  // stays inside

  struct Case {
    std::string path;
    absl::StatusCode code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"../x", absl::StatusCode::kPermissionDenied, "contains \"..\""},
      {"sub/../../x", absl::StatusCode::kPermissionDenied, "contains \"..\""},
      {outside.path() + "/secret.safetensors", absl::StatusCode::kPermissionDenied,
       "is absolute"},
      {"link.safetensors", absl::StatusCode::kPermissionDenied, "outside the model repository"},
      {"linkdir/secret.safetensors", absl::StatusCode::kPermissionDenied,
       "outside the model repository"},
      {"missing.safetensors", absl::StatusCode::kNotFound, "does not exist"},
      {"sub", absl::StatusCode::kInvalidArgument, "not a regular file"},
      {"", absl::StatusCode::kInvalidArgument, "path: empty"},
  };
  for (const Case& c : cases) {
    auto resolved = ResolveModelPath(repo.path(), c.path);
    EXPECT_EQ(resolved.status().code(), c.code) << c.path << ": " << resolved.status();
    EXPECT_THAT(std::string(resolved.status().message()), HasSubstr(c.message)) << c.path;
  }
  EXPECT_EQ(ResolveModelPath("", "x").status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(ServerOptionsTest, ParsesModelList) {
  auto models = ParseModelList("a=x.safetensors,b=/abs/y=z.safetensors");
  ASSERT_TRUE(models.ok()) << models.status();
  ASSERT_EQ(models->size(), 2u);
  EXPECT_EQ((*models)[0], std::make_pair(std::string("a"), std::string("x.safetensors")));
  EXPECT_EQ((*models)[1], std::make_pair(std::string("b"), std::string("/abs/y=z.safetensors")));
  EXPECT_TRUE(ParseModelList("")->empty());
  EXPECT_THAT(std::string(ParseModelList("a").status().message()), HasSubstr("name=path"));
  EXPECT_THAT(std::string(ParseModelList("=x").status().message()), HasSubstr("name=path"));
  EXPECT_THAT(std::string(ParseModelList("a=x,a=y").status().message()),
              HasSubstr("appears twice"));
}

TEST(ServerOptionsTest, ValidatesRangesNamingTheFlag) {
  EXPECT_TRUE(ValidateServerOptions(ServerOptions()).ok());
  auto message = [](auto mutate) {
    ServerOptions o;
    mutate(o);
    return std::string(ValidateServerOptions(o).message());
  };
  EXPECT_THAT(message([](ServerOptions& o) { o.max_request_rows = 1000; }),
              HasSubstr("--max_request_rows=1000"));
  EXPECT_THAT(message([](ServerOptions& o) { o.max_batch_rows = 64; }),
              HasSubstr("--max_batch_rows=64: expected >= --preferred_batch_rows (128)"));
  EXPECT_THAT(message([](ServerOptions& o) { o.port = 70000; }), HasSubstr("--port=70000"));
  EXPECT_THAT(message([](ServerOptions& o) { o.demo_model = "huge"; }),
              HasSubstr("--demo_model=huge: expected large, small, deep or none"));
  EXPECT_THAT(message([](ServerOptions& o) { o.tls_cert = "c.pem"; }),
              HasSubstr("--tls_cert and --tls_key"));
  EXPECT_THAT(message([](ServerOptions& o) { o.max_queue_rows = 10; }),
              HasSubstr("--max_queue_rows=10"));
}

TEST(MetricsTest, FixedNamesAndLabels) {
  Metrics metrics("1.2.3", false);
  metrics.InitModel("m");
  metrics.RecordRequest("m", "OK", 3, 0.01);
  metrics.RecordRequest("m", "INVALID_ARGUMENT", 5, 0.001);
  metrics.RecordQueueWait("m", 0.002);
  metrics.RecordBatch("m", "cuda:1", 130, 0.05);
  metrics.SetQueueRows("m", "cuda:1", 7);
  metrics.InitInstance("m", "cuda:0");
  metrics.SetInstanceHealthy("m", "cuda:1", false);
  metrics.SetModelLoaded("m", 2, "cpu", true);
  metrics.SetDeviceMemory("cuda:0", 1024);
  metrics.RecordFinetuneStep("m", 0.5);
  metrics.RecordRpc("unary", "bitnet.v1.Inference", "Infer", "OK", 0.01);
  const std::string text = metrics.Serialize();
  for (const char* line : {
           "bitnet_requests_total{code=\"OK\",model=\"m\"} 1",
           "bitnet_requests_total{code=\"INVALID_ARGUMENT\",model=\"m\"} 1",
           "bitnet_rows_total{model=\"m\"} 3",  // failed requests add no rows
           "bitnet_request_duration_seconds_count{model=\"m\"} 2",
           "bitnet_queue_duration_seconds_count{model=\"m\"} 1",
           "bitnet_batch_rows_sum{device=\"cuda:1\",model=\"m\"} 130",
           "bitnet_batch_rows_bucket{device=\"cuda:1\",model=\"m\",le=\"128\"} 0",
           "bitnet_batch_rows_bucket{device=\"cuda:1\",model=\"m\",le=\"256\"} 1",
           "bitnet_batch_compute_seconds_count{device=\"cuda:1\",model=\"m\"} 1",
           "bitnet_queue_rows{device=\"cuda:1\",model=\"m\"} 7",
           "bitnet_instance_healthy{device=\"cuda:0\",model=\"m\"} 1",
           "bitnet_instance_healthy{device=\"cuda:1\",model=\"m\"} 0",
           "bitnet_model_info{backend=\"cpu\",model=\"m\",version=\"2\"} 1",
           "bitnet_device_memory_used_bytes{device=\"cuda:0\"} 1024",
           "bitnet_finetune_steps_total{model=\"m\"} 1",
           "bitnet_finetune_loss{model=\"m\"} 0.5",
           "bitnet_build_info{cuda=\"false\",version=\"1.2.3\"} 1",
           "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Infer\","
           "grpc_service=\"bitnet.v1.Inference\",grpc_type=\"unary\"} 1",
           "grpc_server_handling_seconds_count{grpc_method=\"Infer\","
           "grpc_service=\"bitnet.v1.Inference\",grpc_type=\"unary\"} 1",
           "# TYPE bitnet_request_duration_seconds histogram",
       }) {
    EXPECT_THAT(text, HasSubstr(line));
  }
  metrics.SetModelLoaded("m", 2, "cpu", false);
  EXPECT_THAT(metrics.Serialize(), ::testing::Not(HasSubstr("bitnet_model_info{")));
  metrics.RemoveInstance("m", "cuda:0");
  metrics.RemoveInstance("m", "cuda:1");
  EXPECT_THAT(metrics.Serialize(),
              ::testing::Not(HasSubstr("bitnet_instance_healthy{")));
}

TEST(EventLogTest, QuotesValuesThatNeedIt) {
  EXPECT_EQ(FormatLogFields({{"a", "b"}, {"msg", "two words"}, {"q", "say \"hi\""},
                             {"empty", ""}}),
            "a=b msg=\"two words\" q=\"say \\\"hi\\\"\" empty=\"\"");
}

}  // namespace
}  // namespace bitnet

// Integration tests of bitnet-server: a real InferenceServer in-process on
// ephemeral ports, real gRPC channels. Covers every status code of
// ARCHITECTURE.md ("gRPC contract"), results against ReferenceForward on the
// small demo model, admin authentication and path confinement, health,
// reflection, /metrics over HTTP, streams and the drain.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <httplib.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "bitnet/v1/admin.grpc.pb.h"
#include "bitnet/v1/inference.grpc.pb.h"
#include "gmock/gmock.h"
#include "gated_backend.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "server/metrics/metrics.h"
#include "server/host/half.h"
#include "server/model/model_file.h"
#include "server/registry/model_registry.h"
#include "server/service/serving_state.h"
#include "server_test_util.h"

namespace bitnet {
namespace {

using ::bitnet::testing::Gate;
using ::bitnet::testing::GatedBackend;
using ::bitnet::testing::MakeClient;
using ::bitnet::testing::MetricValue;
using ::bitnet::testing::RandomRows;
using ::bitnet::testing::Reference;
using ::bitnet::testing::TestOptions;
using ::bitnet::testing::WaitFor;
using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr char kToken[] = "test-admin-token-0123456789";

// ---- fixture ----

class ServerTest : public ::testing::Test {
 protected:
  void Start(ServerOptions options = TestOptions()) {
    auto server = InferenceServer::Create(std::move(options));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    client_ = MakeClient(server_->port());
  }
  void StartGated(ServerOptions options = TestOptions()) {
    gate_ = std::make_shared<Gate>();
    options.backend = std::make_shared<GatedBackend>(gate_);
    Start(std::move(options));
  }
  void TearDown() override {
    if (gate_ != nullptr) gate_->Set(true);  // never leave a batch stuck
    client_.reset();
    server_.reset();
  }

  int64_t QueuedRows(const std::string& model = "demo") {
    for (const ModelStatus& m : server_->registry().List()) {
      if (m.name == model) return m.queued_rows;
    }
    return -1;
  }
  double Metric(const std::string& series) {
    return MetricValue(server_->metrics().Serialize(), series);
  }

  // Sends `request` on its own thread with a raw stub (so the test can
  // cancel it); returns the status once done.
  struct Pending {
    grpc::ClientContext context;
    v1::InferRequest request;
    v1::InferResponse response;
    grpc::Status status;
    std::thread thread;
    void Join() { if (thread.joinable()) thread.join(); }
  };
  std::unique_ptr<Pending> SendAsync(const std::string& model, int64_t rows,
                                     absl::Duration timeout = absl::Seconds(30)) {
    auto p = std::make_unique<Pending>();
    p->request = *MakeInferRequest(model, RandomRows(rows, 64, 7), 64);
    p->context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    Pending* raw = p.get();
    auto stub = v1::Inference::NewStub(client_->channel());
    p->thread = std::thread([raw, stub = std::shared_ptr(std::move(stub))] {
      raw->status = stub->Infer(&raw->context, raw->request, &raw->response);
    });
    return p;
  }

  std::shared_ptr<Gate> gate_;
  std::unique_ptr<InferenceServer> server_;
  std::unique_ptr<Client> client_;
};

// ---- results ----

TEST_F(ServerTest, InferMatchesReferenceForwardForEveryDtype) {
  Start();
  const Model model = MakeDemoModel(DemoModelSize::kSmall);
  const std::vector<float> x = RandomRows(5, 64, 11);
  const std::vector<float> want = Reference(model, x);

  auto got = client_->Infer("demo", x, 64);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->model, "demo");
  EXPECT_EQ(got->version, 1u);
  EXPECT_EQ(got->rows, 5);
  EXPECT_EQ(got->cols, 32);
  // int8 activations: integer accumulation, so the CPU backend and the
  // oracle agree exactly.
  EXPECT_EQ(got->values, want);

  // FP16 / BF16 inputs: the server widens them exactly, so the oracle runs
  // on the rounded inputs.
  for (v1::DType dtype : {v1::DTYPE_FP16, v1::DTYPE_BF16}) {
    std::vector<float> rounded(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      rounded[i] = dtype == v1::DTYPE_FP16 ? HalfToFloat(FloatToHalf(x[i]))
                                           : BFloat16ToFloat(FloatToBFloat16(x[i]));
    }
    auto request = MakeInferRequest("demo", x, 64, 0, dtype);
    ASSERT_TRUE(request.ok());
    request->set_output_dtype(dtype);
    request->set_request_id("r-" + v1::DType_Name(dtype));
    auto response = client_->Infer(*request);
    ASSERT_TRUE(response.ok()) << response.status();
    EXPECT_EQ(response->request_id(), "r-" + v1::DType_Name(dtype));
    EXPECT_EQ(response->output().dtype(), dtype);
    const std::vector<float> ref = Reference(model, rounded);
    auto decoded = DecodeInferResponse(*response);
    ASSERT_TRUE(decoded.ok());
    for (size_t i = 0; i < ref.size(); ++i) {
      const float expect = dtype == v1::DTYPE_FP16 ? HalfToFloat(FloatToHalf(ref[i]))
                                                   : BFloat16ToFloat(FloatToBFloat16(ref[i]));
      ASSERT_EQ(decoded->values[i], expect) << v1::DType_Name(dtype) << " element " << i;
    }
  }
}

TEST_F(ServerTest, ConcurrentRequestsEachGetTheirOwnRows) {
  ServerOptions o = TestOptions();
  o.max_queue_delay = absl::Milliseconds(20);  // let requests share batches
  Start(o);
  const Model model = MakeDemoModel(DemoModelSize::kSmall);
  constexpr int kClients = 24;
  std::vector<std::thread> threads;
  std::vector<absl::StatusOr<InferOutput>> results(kClients, absl::UnknownError("unset"));
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      results[i] = client_->Infer("demo", RandomRows(1 + i % 5, 64, 100 + i), 64);
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kClients; ++i) {
    ASSERT_TRUE(results[i].ok()) << i << ": " << results[i].status();
    EXPECT_EQ(results[i]->values, Reference(model, RandomRows(1 + i % 5, 64, 100 + i)))
        << "client " << i;
  }
  // Some requests shared a batch: fewer batches than requests.
  const double batches = Metric("bitnet_batch_rows_count{device=\"cpu\",model=\"demo\"}");
  EXPECT_GT(batches, 0);
  EXPECT_LT(batches, kClients);
}

TEST_F(ServerTest, InferStreamAnswersEveryRequestById) {
  Start();
  const Model model = MakeDemoModel(DemoModelSize::kSmall);
  auto stub = v1::Inference::NewStub(client_->channel());
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  auto stream = stub->InferStream(&context);
  constexpr int kRequests = 20;
  for (int i = 0; i < kRequests; ++i) {
    auto request = *MakeInferRequest("demo", RandomRows(1 + i % 3, 64, 500 + i), 64);
    request.set_request_id("id-" + std::to_string(i));
    if (i == 7) request.mutable_input()->set_dtype(v1::DTYPE_UNSPECIFIED);
    if (i == 9) request.set_model("nope");
    ASSERT_TRUE(stream->Write(request));
  }
  ASSERT_TRUE(stream->WritesDone());
  std::map<std::string, v1::InferStreamResponse> answers;
  v1::InferStreamResponse answer;
  while (stream->Read(&answer)) answers[answer.request_id()] = answer;
  const grpc::Status status = stream->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(answers.size(), static_cast<size_t>(kRequests));
  for (int i = 0; i < kRequests; ++i) {
    const v1::InferStreamResponse& a = answers["id-" + std::to_string(i)];
    if (i == 7) {
      EXPECT_EQ(a.error().code(), grpc::StatusCode::INVALID_ARGUMENT);
      EXPECT_THAT(a.error().message(), HasSubstr("input.dtype"));
      continue;
    }
    if (i == 9) {
      EXPECT_EQ(a.error().code(), grpc::StatusCode::NOT_FOUND);
      continue;
    }
    ASSERT_TRUE(a.has_response()) << i << ": " << a.error().message();
    EXPECT_EQ(a.response().request_id(), "id-" + std::to_string(i));
    auto decoded = DecodeInferResponse(a.response());
    ASSERT_TRUE(decoded.ok());
    EXPECT_EQ(decoded->values, Reference(model, RandomRows(1 + i % 3, 64, 500 + i))) << i;
  }
}

TEST_F(ServerTest, ListAndGetModelDescribeTheModel) {
  Start();
  auto models = client_->ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  ASSERT_EQ(models->models_size(), 1);
  EXPECT_EQ(models->models(0).name(), "demo");
  EXPECT_EQ(models->models(0).latest_version(), 1u);
  EXPECT_EQ(models->models(0).backend(), "cpu");
  EXPECT_EQ(models->models(0).input_features(), 64);
  EXPECT_EQ(models->models(0).output_features(), 32);

  auto info = client_->GetModel("demo");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->version(), 1u);
  EXPECT_THAT(info->versions(), ::testing::ElementsAre(1u));
  EXPECT_THAT(info->input_shape(), ::testing::ElementsAre(-1, 64));
  EXPECT_THAT(info->output_shape(), ::testing::ElementsAre(-1, 32));
  EXPECT_EQ(info->input_dtypes_size(), 3);
  ASSERT_EQ(info->layers_size(), 2);
  EXPECT_EQ(info->layers(0).in_features(), 64);
  EXPECT_EQ(info->layers(0).out_features(), 128);
  EXPECT_EQ(info->layers(0).activation(), "relu");
  EXPECT_EQ(info->layers(0).act_quant(), "int8");
  EXPECT_EQ(info->layers(0).scale_granularity(), "per_row");
  EXPECT_THAT(info->layers(0).packed_shape(), ::testing::ElementsAre(128, 4));
  EXPECT_THAT(info->layers(1).packed_shape(), ::testing::ElementsAre(32, 8));
  EXPECT_EQ(info->packed_bytes(), MakeDemoModel(DemoModelSize::kSmall).PackedBytes());
  EXPECT_EQ(client_->GetModel("demo", 9).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->GetModel("").status().code(), absl::StatusCode::kInvalidArgument);
}

// ---- status codes ----

TEST_F(ServerTest, InvalidArgumentNamesTheFieldAndExpectedValue) {
  ServerOptions o = TestOptions();
  o.max_request_rows = 8;
  o.max_batch_rows = 128;
  Start(o);
  auto base = *MakeInferRequest("demo", RandomRows(2, 64, 1), 64);
  struct Case {
    std::string name;
    std::function<void(v1::InferRequest&)> mutate;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"shape", [](auto& r) { r.mutable_input()->set_shape(1, 63); },
       "input.shape: [2, 63]; expected [rows, 64]"},
      {"dtype", [](auto& r) { r.mutable_input()->set_dtype(v1::DTYPE_UNSPECIFIED); },
       "input.dtype: DTYPE_UNSPECIFIED; expected DTYPE_FP32, DTYPE_FP16 or DTYPE_BF16"},
      {"bytes", [](auto& r) { r.mutable_input()->mutable_data()->resize(100); },
       "input.data: 100 bytes; expected 512"},
      {"nan", [](auto& r) {
         const float nan = std::numeric_limits<float>::quiet_NaN();
         std::memcpy(r.mutable_input()->mutable_data()->data() + 4 * 70, &nan, 4);
       }, "input.data: element [1, 6] is NaN; expected finite values"},
      {"rows", [](auto& r) {
         r = *MakeInferRequest("demo", RandomRows(9, 64, 1), 64);
       }, "input.shape[0]: 9 rows; expected at most 8"},
      {"model", [](auto& r) { r.set_model(""); }, "model: empty"},
      {"output_dtype", [](auto& r) { r.set_output_dtype(static_cast<v1::DType>(42)); },
       "output_dtype: 42"},
  };
  for (const Case& c : cases) {
    v1::InferRequest request = base;
    c.mutate(request);
    auto response = client_->Infer(request);
    EXPECT_EQ(response.status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_THAT(std::string(response.status().message()), HasSubstr(c.message)) << c.name;
  }
  EXPECT_EQ(Metric("bitnet_requests_total{code=\"INVALID_ARGUMENT\",model=\"demo\"}"),
            static_cast<double>(cases.size() - 1));  // "" is not a known model
  EXPECT_EQ(Metric("bitnet_requests_total{code=\"INVALID_ARGUMENT\",model=\"unknown\"}"), 1);
}

TEST_F(ServerTest, NotFoundForUnknownModelAndVersion) {
  Start();
  auto x = RandomRows(1, 64, 1);
  auto r = client_->Infer("no-such-model", x, 64);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("no-such-model"));
  r = client_->Infer("demo", x, 64, /*version=*/7);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("7"));
  // Invented names do not create metric series.
  EXPECT_EQ(Metric("bitnet_requests_total{code=\"NOT_FOUND\",model=\"unknown\"}"), 1);
}

TEST_F(ServerTest, ResourceExhaustedForLargeMessages) {
  ServerOptions o = TestOptions();
  o.max_message_bytes = 16 * 1024;
  Start(o);
  auto r = client_->Infer("demo", RandomRows(100, 64, 1), 64);  // 25.6 KB
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
  EXPECT_TRUE(client_->Infer("demo", RandomRows(10, 64, 1), 64).ok());
}

TEST_F(ServerTest, ResourceExhaustedWhenTheQueueIsFull) {
  ServerOptions o = TestOptions();
  o.preferred_batch_rows = 8;
  o.max_batch_rows = 8;
  o.max_request_rows = 8;
  o.max_queue_rows = 8;
  StartGated(o);
  gate_->Set(false);
  auto a = SendAsync("demo", 8);  // runs, held in Forward
  ASSERT_TRUE(WaitFor([&] { return gate_->Entered() == 1; }));
  auto b = SendAsync("demo", 8);  // waits in the open batch: the queue is full
  ASSERT_TRUE(WaitFor([&] { return QueuedRows() == 8; }));
  auto d = client_->Infer("demo", RandomRows(1, 64, 1), 64);
  EXPECT_EQ(d.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(d.status().message()), HasSubstr("queue full"));
  gate_->Set(true);
  for (auto* p : {a.get(), b.get()}) {
    p->Join();
    EXPECT_TRUE(p->status.ok()) << p->status.error_message();
  }
  EXPECT_EQ(Metric("bitnet_requests_total{code=\"RESOURCE_EXHAUSTED\",model=\"demo\"}"), 1);
}

TEST_F(ServerTest, DeadlineExceededBeforeDispatchIsNeverComputed) {
  ServerOptions o = TestOptions();
  o.preferred_batch_rows = 8;
  o.max_batch_rows = 8;
  o.max_request_rows = 8;
  StartGated(o);
  gate_->Set(false);
  auto a = SendAsync("demo", 8);
  ASSERT_TRUE(WaitFor([&] { return gate_->Entered() == 1; }));
  auto b = SendAsync("demo", 8);  // the open batch, full
  ASSERT_TRUE(WaitFor([&] { return QueuedRows() == 8; }));
  auto c = SendAsync("demo", 4, absl::Milliseconds(300));  // waits in the queue
  c->Join();
  EXPECT_EQ(c->status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  // The server itself dropped it (not just the client giving up).
  ASSERT_TRUE(WaitFor([&] {
    return Metric("bitnet_requests_total{code=\"DEADLINE_EXCEEDED\",model=\"demo\"}") == 1;
  }));
  EXPECT_EQ(QueuedRows(), 8);  // b only
  gate_->Set(true);
  a->Join();
  b->Join();
  EXPECT_TRUE(a->status.ok());
  EXPECT_TRUE(b->status.ok());
  EXPECT_EQ(gate_->Rows(), 16);  // a and b only
}

TEST_F(ServerTest, CancelledBeforeDispatchIsNeverComputed) {
  ServerOptions o = TestOptions();
  o.preferred_batch_rows = 8;
  o.max_batch_rows = 8;
  o.max_request_rows = 8;
  StartGated(o);
  gate_->Set(false);
  auto a = SendAsync("demo", 8);
  ASSERT_TRUE(WaitFor([&] { return gate_->Entered() == 1; }));
  auto b = SendAsync("demo", 8);  // the open batch, full
  ASSERT_TRUE(WaitFor([&] { return QueuedRows() == 8; }));
  auto c = SendAsync("demo", 4);
  ASSERT_TRUE(WaitFor([&] { return QueuedRows() == 12; }));
  c->context.TryCancel();
  c->Join();
  EXPECT_EQ(c->status.error_code(), grpc::StatusCode::CANCELLED);
  // The client ends its call at once; the server learns of the cancel
  // later (RST_STREAM), and its queue sweep (every 10 ms) then drops c while
  // the device is still held. Opening the gate before that let a loaded
  // machine compute c (1 run in 300 with 3 CPU hogs; once in CI).
  ASSERT_TRUE(WaitFor([&] {
    return Metric("bitnet_requests_total{code=\"CANCELLED\",model=\"demo\"}") == 1;
  }));
  EXPECT_EQ(QueuedRows(), 8);
  gate_->Set(true);
  a->Join();
  b->Join();
  EXPECT_EQ(gate_->Rows(), 16);
}

TEST_F(ServerTest, InternalOnDeviceFailure) {
  StartGated();
  gate_->SetFail(true);
  auto r = client_->Infer("demo", RandomRows(2, 64, 1), 64);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("simulated device failure"));
  EXPECT_EQ(Metric("bitnet_requests_total{code=\"INTERNAL\",model=\"demo\"}"), 1);
}

TEST_F(ServerTest, UnavailableWhileLoading) {
  ServerOptions o = TestOptions();
  o.load_models_in_background = true;
  auto release = std::make_shared<absl::Notification>();
  o.before_model_load = [release](std::string_view) { release->WaitForNotification(); };
  Start(o);
  auto r = client_->Infer("demo", RandomRows(1, 64, 1), 64);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("loading"));
  auto health = client_->Health("");
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, "NOT_SERVING");
  release->Notify();
  ASSERT_TRUE(server_->WaitForInitialModels().ok());
  EXPECT_TRUE(client_->Infer("demo", RandomRows(1, 64, 1), 64).ok());
  EXPECT_EQ(*client_->Health(""), "SERVING");
}

TEST_F(ServerTest, DrainCompletesQueuedWorkAndRefusesNewCalls) {
  StartGated();
  gate_->Set(false);
  auto a = SendAsync("demo", 3);
  ASSERT_TRUE(WaitFor([&] { return gate_->Entered() == 1; }));
  const absl::Time start = absl::Now();
  std::atomic<bool> drained{false};
  std::thread drainer([&] {
    EXPECT_TRUE(server_->Drain(absl::Seconds(20)));
    drained = true;
  });
  ASSERT_TRUE(WaitFor([&] { return server_->state().draining(); }));
  auto refused = client_->Infer("demo", RandomRows(1, 64, 1), 64);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("draining"));
  EXPECT_EQ(*client_->Health(""), "NOT_SERVING");
  EXPECT_EQ(*client_->Health("demo"), "NOT_SERVING");
  EXPECT_FALSE(drained);  // a is still running
  gate_->Set(true);
  a->Join();
  EXPECT_TRUE(a->status.ok()) << a->status.error_message();
  EXPECT_EQ(a->response.output().shape(0), 3);
  drainer.join();
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));
}

// ---- admin ----

class AdminTest : public ServerTest {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "/bitnet_admin_test_XXXXXX";
    repo_ = mkdtemp(tmpl.data());
    outside_ = repo_ + "_outside";
    std::filesystem::create_directories(outside_);
    ASSERT_TRUE(WriteModelFile(MakeDemoModel(DemoModelSize::kSmall),
                               repo_ + "/small.safetensors").ok());
    ASSERT_TRUE(WriteModelFile(MakeDemoModel(DemoModelSize::kSmall),
                               outside_ + "/secret.safetensors").ok());
    std::filesystem::create_symlink(outside_ + "/secret.safetensors",
                                    repo_ + "/escape.safetensors");
    std::ofstream(repo_ + "/broken.safetensors") << "not a model";
  }
  void TearDown() override {
    ServerTest::TearDown();
    std::filesystem::remove_all(repo_);
    std::filesystem::remove_all(outside_);
    std::filesystem::remove(repo_ + ".token");
  }
  ServerOptions AdminOptions() {
    ServerOptions o = TestOptions();
    o.model_repository = repo_;
    std::ofstream(repo_ + ".token") << kToken << "\n";
    o.admin_token_file = repo_ + ".token";
    return o;
  }
  std::string repo_;
  std::string outside_;
};

TEST_F(AdminTest, AdminIsOffWithoutAToken) {
  ServerOptions o = TestOptions();
  o.model_repository = repo_;
  Start(o);
  auto admin = MakeClient(server_->port(), absl::Seconds(30), kToken);
  auto r = admin->LoadModel("x", "small.safetensors");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("--admin_token_file"));
  EXPECT_EQ(admin->GetStats().status().code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(AdminTest, RefusesMissingAndWrongTokens) {
  Start(AdminOptions());
  EXPECT_EQ(client_->GetStats().status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(client_->LoadModel("x", "small.safetensors").status().code(),
            absl::StatusCode::kUnauthenticated);
  auto wrong = MakeClient(server_->port(), absl::Seconds(30), "test-admin-token-0123456788");
  EXPECT_EQ(wrong->GetStats().status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(wrong->UnloadModel("demo").status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(client_->Infer("demo", RandomRows(1, 64, 1), 64).ok());  // still served
  auto right = MakeClient(server_->port(), absl::Seconds(30), kToken);
  EXPECT_TRUE(right->GetStats().ok());
}

TEST_F(AdminTest, LoadVersionsPinUnloadAndStats) {
  Start(AdminOptions());
  auto admin = MakeClient(server_->port(), absl::Seconds(30), kToken);
  auto loaded = admin->LoadModel("m2", "small.safetensors");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->version(), 1u);
  EXPECT_EQ(loaded->model().layers_size(), 2);
  loaded = admin->LoadModel("m2", "small.safetensors");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->version(), 2u);
  EXPECT_EQ(*client_->Health("m2"), "SERVING");

  const Model model = MakeDemoModel(DemoModelSize::kSmall);
  const auto x = RandomRows(3, 64, 5);
  auto latest = client_->Infer("m2", x, 64);
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(latest->version, 2u);
  EXPECT_EQ(latest->values, Reference(model, x));
  auto pinned = client_->Infer("m2", x, 64, /*version=*/1);
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  EXPECT_EQ(pinned->version, 1u);
  EXPECT_THAT(client_->GetModel("m2")->versions(), ::testing::ElementsAre(1u, 2u));
  EXPECT_EQ(Metric("bitnet_model_info{backend=\"cpu\",model=\"m2\",version=\"2\"}"), 1);

  auto stats = admin->GetStats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  bool found = false;
  for (const auto& m : stats->models()) {
    if (m.name() != "m2") continue;
    found = true;
    EXPECT_EQ(m.requests(), 2u);
    EXPECT_EQ(m.rows(), 6u);
    EXPECT_EQ(m.latest_version(), 2u);
    EXPECT_GE(m.batches(), 2u);
  }
  EXPECT_TRUE(found);

  auto unloaded = admin->UnloadModel("m2", 2);
  ASSERT_TRUE(unloaded.ok()) << unloaded.status();
  EXPECT_THAT(unloaded->remaining_versions(), ::testing::ElementsAre(1u));
  EXPECT_EQ(client_->Infer("m2", x, 64)->version, 1u);
  EXPECT_EQ(Metric("bitnet_model_info{backend=\"cpu\",model=\"m2\",version=\"2\"}"), -1);
  ASSERT_TRUE(admin->UnloadModel("m2").ok());
  EXPECT_EQ(client_->Infer("m2", x, 64).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(*client_->Health("m2"), "NOT_SERVING");
  EXPECT_EQ(admin->UnloadModel("m2").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(AdminTest, ModelPathsAreConfinedToTheRepository) {
  Start(AdminOptions());
  auto admin = MakeClient(server_->port(), absl::Seconds(30), kToken);
  struct Case {
    std::string path;
    absl::StatusCode code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"../" + std::filesystem::path(outside_).filename().string() + "/secret.safetensors",
       absl::StatusCode::kPermissionDenied, "\"..\""},
      {outside_ + "/secret.safetensors", absl::StatusCode::kPermissionDenied, "absolute"},
      {"escape.safetensors", absl::StatusCode::kPermissionDenied, "outside the model repository"},
      {"missing.safetensors", absl::StatusCode::kNotFound, "does not exist"},
      {"broken.safetensors", absl::StatusCode::kInvalidArgument, ""},
  };
  for (const Case& c : cases) {
    auto r = admin->LoadModel("x", c.path);
    EXPECT_EQ(r.status().code(), c.code) << c.path << ": " << r.status();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(c.message)) << c.path;
  }
  EXPECT_EQ(admin->LoadModel("bad name!", "small.safetensors").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->Infer("x", RandomRows(1, 64, 1), 64).status().code(),
            absl::StatusCode::kNotFound);
}

// ---- health, reflection, metrics ----

TEST_F(ServerTest, HealthOverallAndPerModel) {
  Start();
  EXPECT_EQ(*client_->Health(""), "SERVING");
  EXPECT_EQ(*client_->Health("demo"), "SERVING");
  EXPECT_EQ(client_->Health("nope").status().code(), absl::StatusCode::kNotFound);
}

// Lists services through grpc.reflection.v1alpha.ServerReflection with a
// generic stub: the request is encoded by hand (list_services = field 7,
// empty) and the response decoded with a minimal wire-format reader, since
// Debian ships no C++ headers for the reflection proto.
std::vector<std::string> ListServicesByReflection(std::shared_ptr<grpc::Channel> channel) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  grpc::CompletionQueue cq;
  auto call = stub.PrepareCall(
      &context, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  void* tag;
  bool ok;
  auto step = [&](intptr_t want) {
    EXPECT_TRUE(cq.Next(&tag, &ok));
    EXPECT_EQ(reinterpret_cast<intptr_t>(tag), want);
    return ok;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  if (!step(1)) return {};
  const std::string request("\x3a\x00", 2);
  grpc::Slice slice(request);
  grpc::ByteBuffer out(&slice, 1);
  call->Write(out, reinterpret_cast<void*>(2));
  if (!step(2)) return {};
  call->WritesDone(reinterpret_cast<void*>(3));
  step(3);
  grpc::ByteBuffer in;
  call->Read(&in, reinterpret_cast<void*>(4));
  if (!step(4)) return {};
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  step(5);
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(in.Dump(&slices).ok());
  std::string bytes;
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());

  // Length-delimited fields only matter here; varints are skipped.
  auto fields = [](const std::string& msg) {
    std::vector<std::pair<int, std::string>> result;
    size_t i = 0;
    auto varint = [&]() {
      uint64_t v = 0;
      for (int shift = 0; i < msg.size(); shift += 7) {
        const uint8_t b = static_cast<uint8_t>(msg[i++]);
        v |= static_cast<uint64_t>(b & 0x7f) << shift;
        if (!(b & 0x80)) break;
      }
      return v;
    };
    while (i < msg.size()) {
      const uint64_t key = varint();
      if ((key & 7) == 2) {
        const uint64_t len = varint();
        result.emplace_back(static_cast<int>(key >> 3), msg.substr(i, len));
        i += len;
      } else if ((key & 7) == 0) {
        varint();
      } else {
        break;
      }
    }
    return result;
  };
  std::vector<std::string> names;
  for (const auto& [field, list] : fields(bytes)) {
    if (field != 6) continue;  // list_services_response
    for (const auto& [f2, service] : fields(list)) {
      if (f2 != 1) continue;
      for (const auto& [f3, name] : fields(service)) {
        if (f3 == 1) names.push_back(name);
      }
    }
  }
  return names;
}

TEST_F(ServerTest, ReflectionListsTheServices) {
  Start();
  const auto names = ListServicesByReflection(client_->channel());
  EXPECT_THAT(names, ::testing::IsSupersetOf({std::string("bitnet.v1.Inference"),
                                              std::string("bitnet.v1.Admin"),
                                              std::string("grpc.health.v1.Health")}));
}

TEST_F(ServerTest, MetricsOverHttpShowTheFixedNames) {
  Start();
  ASSERT_TRUE(client_->Infer("demo", RandomRows(3, 64, 1), 64).ok());
  ASSERT_TRUE(client_->ListModels().ok());
  httplib::Client http("127.0.0.1", server_->metrics_port());
  auto response = http.Get("/metrics");
  ASSERT_TRUE(response) << "no HTTP response";
  EXPECT_EQ(response->status, 200);
  EXPECT_THAT(response->get_header_value("Content-Type"), HasSubstr("text/plain"));
  const std::string& text = response->body;
  // bitnet_finetune_loss has no series until a model is fine-tuned.
  for (const char* name :
       {"bitnet_requests_total", "bitnet_rows_total", "bitnet_request_duration_seconds",
        "bitnet_queue_duration_seconds", "bitnet_batch_rows", "bitnet_batch_compute_seconds",
        "bitnet_queue_rows", "bitnet_model_info", "bitnet_device_memory_used_bytes",
        "bitnet_finetune_steps_total", "bitnet_build_info", "grpc_server_handled_total",
        "grpc_server_handling_seconds"}) {
    EXPECT_THAT(text, HasSubstr(std::string("\n# TYPE ") + name + " ")) << name;
  }
  EXPECT_EQ(MetricValue(text, "bitnet_requests_total{code=\"OK\",model=\"demo\"}"), 1);
  EXPECT_EQ(MetricValue(text, "bitnet_rows_total{model=\"demo\"}"), 3);
  EXPECT_EQ(MetricValue(text, "bitnet_model_info{backend=\"cpu\",model=\"demo\",version=\"1\"}"), 1);
  EXPECT_EQ(MetricValue(text, "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Infer\","
                              "grpc_service=\"bitnet.v1.Inference\",grpc_type=\"unary\"}"), 1);
  EXPECT_GE(MetricValue(text, "bitnet_batch_rows_count{device=\"cpu\",model=\"demo\"}"), 1);
  EXPECT_EQ(MetricValue(text, "bitnet_queue_rows{device=\"cpu\",model=\"demo\"}"), 0);
  EXPECT_EQ(http.Get("/nope")->status, 404);
}

// TLS and mTLS with certificates made by the openssl CLI at test time.
TEST_F(ServerTest, TlsAndMutualTls) {
  if (std::system("openssl version > /dev/null 2>&1") != 0) {
    GTEST_SKIP() << "openssl CLI not found";
  }
  std::string tmpl = ::testing::TempDir() + "/bitnet_tls_test_XXXXXX";
  const std::string dir = mkdtemp(tmpl.data());
  const std::string script =
      "cd " + dir + " && "
      "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 "
      "-subj /CN=test-ca && "
      "openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr "
      "-subj /CN=localhost && "
      "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > ext.cnf && "
      "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
      "-out server.pem -days 1 -extfile ext.cnf && "
      "openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj /CN=client && "
      "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
      "-out client.pem -days 1";
  ASSERT_EQ(std::system((script + " > /dev/null 2>&1").c_str()), 0) << script;

  auto client_with = [&](int port, bool ca, bool cert) {
    ClientOptions c;
    c.address = "127.0.0.1:" + std::to_string(port);
    c.timeout = absl::Seconds(5);
    if (ca) c.tls_ca = dir + "/ca.pem";
    if (cert) {
      c.tls_cert = dir + "/client.pem";
      c.tls_key = dir + "/client.key";
    }
    return *Client::Create(c);
  };
  for (bool mutual : {false, true}) {
    ServerOptions o = TestOptions();
    o.tls_cert = dir + "/server.pem";
    o.tls_key = dir + "/server.key";
    if (mutual) o.tls_ca = dir + "/ca.pem";
    auto server = InferenceServer::Create(o);
    ASSERT_TRUE(server.ok()) << server.status();
    const int port = (*server)->port();
    auto verified = client_with(port, true, mutual);
    auto health = verified->Health("");
    ASSERT_TRUE(health.ok()) << "mutual=" << mutual << ": " << health.status();
    EXPECT_EQ(*health, "SERVING");
    EXPECT_TRUE(verified->Infer("demo", RandomRows(1, 64, 1), 64).ok());
    EXPECT_EQ(client_with(port, false, false)->Health("").status().code(),
              absl::StatusCode::kUnavailable)
        << "plaintext client, mutual=" << mutual;
    if (mutual) {
      EXPECT_EQ(client_with(port, true, false)->Health("").status().code(),
                absl::StatusCode::kUnavailable)
          << "mTLS server accepted a client without a certificate";
    }
  }
  std::filesystem::remove_all(dir);
}

TEST_F(ServerTest, StartupErrorsNameTheFlag) {
  ServerOptions o = TestOptions();
  o.models = {{"m", "/nonexistent/model.safetensors"}};
  auto server = InferenceServer::Create(o);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(server.status().message()), HasSubstr("model \"m\""));
  o = TestOptions();
  o.device = "tpu";
  EXPECT_EQ(InferenceServer::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
}

// gRPC's default SO_REUSEPORT would let a second server share the port and
// take half of the new connections; the second one must refuse to start.
TEST_F(ServerTest, APortInUseIsAStartupErrorNamingTheFlag) {
  ServerOptions o = TestOptions();
  o.demo_model = "none";
  auto first = InferenceServer::Create(o);
  ASSERT_TRUE(first.ok()) << first.status();
  o.port = (*first)->port();
  auto second = InferenceServer::Create(o);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(second.status().message()),
              AllOf(HasSubstr("--port"), HasSubstr(absl::StrCat(":", o.port)),
                    HasSubstr("address in use")));

  // The same for the metrics listener, on a free gRPC port.
  o.port = 0;
  o.metrics_port = (*first)->metrics_port();
  auto third = InferenceServer::Create(o);
  EXPECT_EQ(third.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(third.status().message()),
              AllOf(HasSubstr("--metrics_port"),
                    HasSubstr(absl::StrCat(":", o.metrics_port)),
                    HasSubstr("address in use")));
}

}  // namespace
}  // namespace bitnet

// bitnet::Client against scripted in-process gRPC servers (no model, no
// batcher): retries and their limits, the admin calls that must not be
// retried, deadlines, async and future Infer, InferStream, the admin token,
// round_robin over several addresses, and the pure helpers (targets,
// service config, tensors). The real server is exercised by
// server_integration_test and tests/cli_test.py.
#include "client/client.h"
#include "client/load_streams.h"

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <future>
#include <iostream>
#include <limits>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "bitnet/v1/admin.grpc.pb.h"
#include "bitnet/v1/inference.grpc.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace bitnet {
namespace {

using ::testing::HasSubstr;

// Infer fails with `fail_code` for the first `failures` calls, then echoes
// the input as the output. Counts every call it sees.
class ScriptedInference final : public v1::Inference::Service {
 public:
  std::atomic<int> calls{0};
  std::atomic<int> failures{0};
  grpc::StatusCode fail_code = grpc::StatusCode::UNAVAILABLE;
  absl::Duration delay = absl::ZeroDuration();
  std::string name = "s";

  // Infer handlers still running (a client may have given up on a slow one;
  // the test server waits for them so it never shuts down under a sleeping
  // sync handler, which makes gRPC abort).
  std::atomic<int> in_flight{0};

  grpc::Status Infer(grpc::ServerContext*, const v1::InferRequest* request,
                     v1::InferResponse* response) override {
    in_flight.fetch_add(1);
    struct Leave {
      std::atomic<int>* count;
      ~Leave() { count->fetch_sub(1); }
    } on_return{&in_flight};
    const int n = calls.fetch_add(1);
    if (delay > absl::ZeroDuration()) absl::SleepFor(delay);
    if (n < failures.load()) return grpc::Status(fail_code, "scripted failure");
    response->set_model(request->model());
    response->set_version(7);
    *response->mutable_output() = request->input();
    response->set_request_id(name);
    return grpc::Status::OK;
  }

  grpc::Status InferStream(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<v1::InferStreamResponse, v1::InferRequest>* stream)
      override {
    v1::InferRequest request;
    while (stream->Read(&request)) {
      calls.fetch_add(1);
      v1::InferStreamResponse answer;
      answer.set_request_id(request.request_id());
      if (request.input().shape_size() != 2) {
        answer.mutable_error()->set_code(3);
        answer.mutable_error()->set_message("input.shape: expected 2-D");
      } else {
        answer.mutable_response()->set_request_id(request.request_id());
        *answer.mutable_response()->mutable_output() = request.input();
      }
      stream->Write(answer);
    }
    return grpc::Status::OK;
  }

  grpc::Status GetModel(grpc::ServerContext*, const v1::GetModelRequest* request,
                        v1::GetModelResponse* response) override {
    const int n = calls.fetch_add(1);
    if (n < failures.load()) return grpc::Status(fail_code, "scripted failure");
    response->set_name(request->name());
    return grpc::Status::OK;
  }
};

// Every admin call fails with UNAVAILABLE (so a retry would be visible) and
// records the authorization metadata it received.
class ScriptedAdmin final : public v1::Admin::Service {
 public:
  std::atomic<int> load_calls{0};
  std::atomic<int> stats_calls{0};
  std::atomic<int> save_calls{0};
  absl::Mutex mu;
  std::string authorization ABSL_GUARDED_BY(mu);

  void Record(grpc::ServerContext* context) {
    absl::MutexLock lock(&mu);
    auto it = context->client_metadata().find("authorization");
    authorization = it == context->client_metadata().end()
                        ? "<none>"
                        : std::string(it->second.data(), it->second.size());
  }
  grpc::Status LoadModel(grpc::ServerContext* context, const v1::LoadModelRequest*,
                         v1::LoadModelResponse*) override {
    Record(context);
    load_calls.fetch_add(1);
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "loading elsewhere");
  }
  grpc::Status SaveModel(grpc::ServerContext* context, const v1::SaveModelRequest*,
                         v1::SaveModelResponse*) override {
    Record(context);
    save_calls.fetch_add(1);
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "busy");
  }
  grpc::Status GetStats(grpc::ServerContext* context, const v1::GetStatsRequest*,
                        v1::GetStatsResponse* response) override {
    Record(context);
    if (stats_calls.fetch_add(1) == 0) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "first stats call fails");
    }
    response->set_server_version("scripted");
    return grpc::Status::OK;
  }
};

struct TestServer {
  ScriptedInference inference;
  ScriptedAdmin admin;
  std::unique_ptr<grpc::Server> server;
  int port = 0;

  TestServer() {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&inference);
    builder.RegisterService(&admin);
    server = builder.BuildAndStart();
  }
  ~TestServer() {
    const absl::Time give_up = absl::Now() + absl::Seconds(10);
    while (inference.in_flight.load() > 0 && absl::Now() < give_up) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    server->Shutdown(absl::ToChronoTime(absl::Now()));
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port); }
};

// A port nobody listens on (bound and closed again by a throwaway server).
int UnusedPort() {
  TestServer gone;
  return gone.port;
}

ClientOptions FastRetries(const std::string& address) {
  ClientOptions o;
  o.address = address;
  o.timeout = absl::Seconds(20);
  o.retry.enabled = true;
  o.retry.initial_backoff = absl::Milliseconds(5);
  o.retry.max_backoff = absl::Milliseconds(20);
  return o;
}

std::unique_ptr<Client> MustCreate(const ClientOptions& options) {
  auto client = Client::Create(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

const std::vector<float> kRow = {1.0f, -2.5f, 0.25f, 3.0f};

// ----------------------------------------------------------------- helpers

TEST(ChannelTargetTest, SingleAddressesPassThrough) {
  EXPECT_EQ(*ChannelTarget("localhost:50051"), "localhost:50051");
  EXPECT_EQ(*ChannelTarget("dns:///svc:1"), "dns:///svc:1");
  EXPECT_EQ(*ChannelTarget("  10.0.0.1:5 "), "10.0.0.1:5");
}

TEST(ChannelTargetTest, ListsBecomeIpTargets) {
  EXPECT_EQ(*ChannelTarget("127.0.0.1:1,10.1.2.3:2"), "ipv4:127.0.0.1:1,10.1.2.3:2");
  EXPECT_EQ(*ChannelTarget("localhost:1, 127.0.0.1:2"), "ipv4:127.0.0.1:1,127.0.0.1:2");
  EXPECT_EQ(*ChannelTarget("[::1]:1,[::1]:2"), "ipv6:[::1]:1,[::1]:2");
}

TEST(ChannelTargetTest, BadListsNameTheEntry) {
  EXPECT_EQ(ChannelTarget("").status().code(), absl::StatusCode::kInvalidArgument);
  auto no_port = ChannelTarget("127.0.0.1:1,127.0.0.2");
  EXPECT_THAT(std::string(no_port.status().message()), HasSubstr("\"127.0.0.2\" has no port"));
  auto host = ChannelTarget("127.0.0.1:1,example.com:2");
  EXPECT_THAT(std::string(host.status().message()), HasSubstr("example.com:2"));
  EXPECT_THAT(std::string(ChannelTarget("1.2.3.4:1,,1.2.3.4:2").status().message()),
              HasSubstr("empty entry"));
  EXPECT_THAT(std::string(ChannelTarget("1.2.3.4:1,[::1]:2").status().message()),
              HasSubstr("mixes IPv4 and IPv6"));
  EXPECT_FALSE(ChannelTarget("1.2.3.4:0,1.2.3.4:2").ok());
  EXPECT_FALSE(ChannelTarget("1.2.3.400:1,1.2.3.4:2").ok());
}

TEST(ServiceConfigTest, RetriesAreOffByDefault) {
  ClientOptions o;
  auto json = ServiceConfigJson(o);
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_THAT(*json, ::testing::Not(HasSubstr("retryPolicy")));
  o.retry.max_attempts = 99;  // not validated while retries are off
  EXPECT_TRUE(ServiceConfigJson(o).ok());
}

TEST(ServiceConfigTest, RetryPolicyAndBalancing) {
  ClientOptions o;
  o.retry.enabled = true;
  auto json = ServiceConfigJson(o);
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_THAT(*json, HasSubstr("\"maxAttempts\":4"));
  EXPECT_THAT(*json, HasSubstr("\"RESOURCE_EXHAUSTED\""));
  EXPECT_THAT(*json, HasSubstr("\"method\":\"Infer\""));
  EXPECT_THAT(*json, ::testing::Not(HasSubstr("LoadModel")));
  EXPECT_THAT(*json, ::testing::Not(HasSubstr("InferStream")));
  EXPECT_THAT(*json, ::testing::Not(HasSubstr("loadBalancingConfig")));
  o.address = "127.0.0.1:1,127.0.0.1:2";
  EXPECT_THAT(*ServiceConfigJson(o), HasSubstr("\"round_robin\""));
  o.retry.enabled = false;
  EXPECT_THAT(*ServiceConfigJson(o), ::testing::Not(HasSubstr("retryPolicy")));
}

TEST(ServiceConfigTest, BadOptionsNameTheField) {
  auto message = [](auto mutate) {
    ClientOptions o;
    o.retry.enabled = true;
    mutate(o);
    return std::string(ServiceConfigJson(o).status().message());
  };
  EXPECT_THAT(message([](ClientOptions& o) { o.retry.max_attempts = 6; }),
              HasSubstr("retry.max_attempts"));
  EXPECT_THAT(message([](ClientOptions& o) { o.retry.max_attempts = 1; }),
              HasSubstr("retry.max_attempts"));
  EXPECT_THAT(message([](ClientOptions& o) { o.retry.initial_backoff = absl::ZeroDuration(); }),
              HasSubstr("retry.initial_backoff"));
  EXPECT_THAT(message([](ClientOptions& o) { o.retry.max_backoff = absl::Milliseconds(1); }),
              HasSubstr("retry.max_backoff"));
  EXPECT_THAT(message([](ClientOptions& o) { o.retry.backoff_multiplier = 0.5; }),
              HasSubstr("retry.backoff_multiplier"));
  EXPECT_THAT(message([](ClientOptions& o) { o.load_balancing = "random"; }),
              HasSubstr("load_balancing"));
}

TEST(ClientCreateTest, BadOptionsAreInvalidArgument) {
  ClientOptions o;
  o.tls_ca = "/nonexistent/ca.pem";
  auto c = Client::Create(o);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("tls_ca"));
  o = ClientOptions();
  o.tls_cert = "cert.pem";
  EXPECT_THAT(std::string(Client::Create(o).status().message()), HasSubstr("tls_key"));
  o = ClientOptions();
  o.retry.enabled = true;
  o.retry.max_attempts = 9;
  EXPECT_EQ(Client::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TensorTest, RoundTripsEveryDtype) {
  const std::vector<float> values = {0.0f, -0.0f, 1.0f, -1.5f, 65504.0f, 1e-7f,
                                     3.14159f, -2.0f};
  for (v1::DType dtype : {v1::DTYPE_FP32, v1::DTYPE_FP16, v1::DTYPE_BF16}) {
    auto tensor = MakeTensor(values, 4, dtype);
    ASSERT_TRUE(tensor.ok()) << tensor.status();
    EXPECT_EQ(tensor->shape(0), 2);
    EXPECT_EQ(tensor->shape(1), 4);
    EXPECT_EQ(tensor->data().size(), values.size() * (dtype == v1::DTYPE_FP32 ? 4 : 2));
    auto decoded = DecodeTensor(*tensor);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    for (size_t i = 0; i < values.size(); ++i) {
      const float tolerance = dtype == v1::DTYPE_FP32 ? 0.0f
                              : dtype == v1::DTYPE_FP16
                                  ? std::max(std::abs(values[i]) * 1e-3f, 6e-8f)
                                  : std::abs(values[i]) * 8e-3f;
      EXPECT_NEAR((*decoded)[i], values[i], tolerance) << "dtype " << dtype << " i " << i;
    }
  }
  // Exact bit patterns of the conversions (round to nearest even).
  auto half = MakeTensor(std::vector<float>{1.0f, 65520.0f, 1.0009765625f}, 3,
                         v1::DTYPE_FP16);
  uint16_t bits[3];
  std::memcpy(bits, half->data().data(), 6);
  EXPECT_EQ(bits[0], 0x3c00);
  EXPECT_EQ(bits[1], 0x7c00);  // rounds up to infinity
  EXPECT_EQ(bits[2], 0x3c01);
  auto bf = MakeTensor(std::vector<float>{1.0f, -2.0f}, 2, v1::DTYPE_BF16);
  std::memcpy(bits, bf->data().data(), 4);
  EXPECT_EQ(bits[0], 0x3f80);
  EXPECT_EQ(bits[1], 0xc000);
}

TEST(TensorTest, ErrorsNameTheField) {
  EXPECT_THAT(std::string(MakeTensor(kRow, 3).status().message()),
              HasSubstr("not a multiple of 3"));
  EXPECT_THAT(std::string(MakeTensor(kRow, 4, v1::DType(42)).status().message()),
              HasSubstr("dtype"));
  v1::Tensor t = *MakeTensor(kRow, 4);
  t.mutable_data()->pop_back();
  EXPECT_THAT(std::string(DecodeTensor(t).status().message()), HasSubstr("tensor.data"));
  t = *MakeTensor(kRow, 4);
  t.add_shape(1);
  EXPECT_THAT(std::string(DecodeTensor(t).status().message()), HasSubstr("tensor.shape"));
  v1::InferResponse response;
  *response.mutable_output() = t;
  EXPECT_EQ(DecodeInferResponse(response).status().code(), absl::StatusCode::kInternal);
}

// ----------------------------------------------------------------- retries

TEST(ClientRetryTest, UnavailableIsRetriedUntilSuccess) {
  TestServer server;
  server.inference.failures = 2;
  auto client = MustCreate(FastRetries(server.address()));
  auto out = client->Infer("m", kRow, 4);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(server.inference.calls.load(), 3);
  EXPECT_EQ(out->values, kRow);
  EXPECT_EQ(out->version, 7u);
}

TEST(ClientRetryTest, ResourceExhaustedIsRetriedOnlyWhenConfigured) {
  TestServer server;
  server.inference.fail_code = grpc::StatusCode::RESOURCE_EXHAUSTED;
  server.inference.failures = 1;
  auto client = MustCreate(FastRetries(server.address()));
  EXPECT_TRUE(client->Infer("m", kRow, 4).ok());
  EXPECT_EQ(server.inference.calls.load(), 2);

  server.inference.calls = 0;
  ClientOptions o = FastRetries(server.address());
  o.retry.retry_resource_exhausted = false;
  auto strict = MustCreate(o);
  auto out = strict->Infer("m", kRow, 4);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(std::string(out.status().message()), "scripted failure");
  EXPECT_EQ(server.inference.calls.load(), 1);
}

TEST(ClientRetryTest, CancelledByTheServerIsRetried) {
  // What a client sees for a call that raced a server's shutdown.
  TestServer server;
  server.inference.fail_code = grpc::StatusCode::CANCELLED;
  server.inference.failures = 1;
  auto client = MustCreate(FastRetries(server.address()));
  EXPECT_TRUE(client->Infer("m", kRow, 4).ok());
  EXPECT_EQ(server.inference.calls.load(), 2);
}

TEST(ClientRetryTest, AttemptsAreCapped) {
  TestServer server;
  server.inference.failures = 100;
  ClientOptions o = FastRetries(server.address());
  o.retry.max_attempts = 3;
  auto client = MustCreate(o);
  auto out = client->Infer("m", kRow, 4);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(server.inference.calls.load(), 3);
}

TEST(ClientRetryTest, OtherCodesAreNotRetried) {
  TestServer server;
  server.inference.fail_code = grpc::StatusCode::INVALID_ARGUMENT;
  server.inference.failures = 1;
  auto client = MustCreate(FastRetries(server.address()));
  EXPECT_EQ(client->Infer("m", kRow, 4).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(server.inference.calls.load(), 1);
}

TEST(ClientRetryTest, DisabledRetriesMakeOneAttempt) {
  TestServer server;
  server.inference.failures = 1;
  ClientOptions o = FastRetries(server.address());
  o.retry.enabled = false;
  auto client = MustCreate(o);
  EXPECT_EQ(client->Infer("m", kRow, 4).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(server.inference.calls.load(), 1);
  // The default options make one attempt too.
  server.inference.calls = 0;
  server.inference.failures = 1;
  ClientOptions defaults;
  defaults.address = server.address();
  auto plain = MustCreate(defaults);
  EXPECT_EQ(plain->Infer("m", kRow, 4).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(server.inference.calls.load(), 1);
}

TEST(ClientRetryTest, BackoffGrowsExponentially) {
  // gRPC 1.51's retry filter waits min(initial * multiplier^(n-1), max) with
  // +-20% jitter before attempt n+1 (measured: not gRFC A6's full jitter).
  // With 200 ms, x2 and 4 attempts the three waits sum to 1.4 s +- 20%; a
  // run far below that would mean no exponential backoff is applied, far
  // above it that the bound is not honoured.
  TestServer server;
  server.inference.failures = 3;
  ClientOptions o = FastRetries(server.address());
  o.retry.initial_backoff = absl::Milliseconds(200);
  o.retry.max_backoff = absl::Seconds(1);
  auto client = MustCreate(o);
  for (int trial = 0; trial < 2; ++trial) {
    server.inference.calls = 0;
    const absl::Time start = absl::Now();
    ASSERT_TRUE(client->Infer("m", kRow, 4).ok());
    const absl::Duration took = absl::Now() - start;
    EXPECT_EQ(server.inference.calls.load(), 4);
    EXPECT_GE(took, absl::Milliseconds(1000)) << "trial " << trial;
    EXPECT_LT(took, absl::Milliseconds(3000)) << "trial " << trial;
    std::cout << "backoff trial " << trial << ": 3 retries took "
              << absl::FormatDuration(took) << "\n";
  }
}

TEST(ClientRetryTest, MutatingAdminCallsAreNeverRetried) {
  TestServer server;
  ClientOptions o = FastRetries(server.address());
  o.admin_token = "secret-token-0123456789";
  auto client = MustCreate(o);
  EXPECT_EQ(client->LoadModel("m", "m.safetensors").status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(server.admin.load_calls.load(), 1);
  v1::SaveModelRequest save;
  save.set_name("m");
  save.set_path("m.safetensors");
  EXPECT_EQ(client->SaveModel(save).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(server.admin.save_calls.load(), 1);
  // GetStats is read-only: retried.
  auto stats = client->GetStats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->server_version(), "scripted");
  EXPECT_EQ(server.admin.stats_calls.load(), 2);
  absl::MutexLock lock(&server.admin.mu);
  EXPECT_EQ(server.admin.authorization, "Bearer secret-token-0123456789");
}

TEST(ClientRetryTest, NoTokenSendsNoAuthorization) {
  TestServer server;
  auto client = MustCreate(FastRetries(server.address()));
  (void)client->LoadModel("m", "p");
  absl::MutexLock lock(&server.admin.mu);
  EXPECT_EQ(server.admin.authorization, "<none>");
}

TEST(ClientDeadlineTest, DeadlineBoundsTheWholeCallWithRetries) {
  TestServer server;
  server.inference.failures = 100;
  server.inference.delay = absl::Milliseconds(150);
  ClientOptions o = FastRetries(server.address());
  o.timeout = absl::Milliseconds(400);
  auto client = MustCreate(o);
  const absl::Time start = absl::Now();
  auto out = client->Infer("m", kRow, 4);
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(out.status().code(), absl::StatusCode::kDeadlineExceeded) << out.status();
  EXPECT_LT(took, absl::Seconds(2));
  EXPECT_LT(server.inference.calls.load(), 4);
}

TEST(ClientDeadlineTest, UnreachableServerIsUnavailable) {
  const int port = UnusedPort();
  ClientOptions o = FastRetries("127.0.0.1:" + std::to_string(port));
  o.timeout = absl::Seconds(5);
  auto client = MustCreate(o);
  EXPECT_EQ(client->Health().status().code(), absl::StatusCode::kUnavailable);
}

TEST(ClientDeadlineTest, WaitForReadyWaitsForTheServerUntilTheDeadline) {
  const int port = UnusedPort();
  ClientOptions o;
  o.address = "127.0.0.1:" + std::to_string(port);
  o.wait_for_ready = true;
  o.timeout = absl::Milliseconds(500);
  auto client = MustCreate(o);
  // Nobody listens: the call waits out its deadline instead of failing
  // fast with UNAVAILABLE.
  const absl::Time start = absl::Now();
  EXPECT_EQ(client->Infer("m", kRow, 4).status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(450));
}

TEST(ClientDeadlineTest, WaitForReadyCallIsAnsweredOnceTheServerIsUp) {
  // The server starts 300 ms after the call was made, on the port the
  // client was given.
  const int port = UnusedPort();
  ClientOptions o;
  o.address = "127.0.0.1:" + std::to_string(port);
  o.wait_for_ready = true;
  o.timeout = absl::Seconds(20);
  auto client = MustCreate(o);
  ScriptedInference inference;
  std::unique_ptr<grpc::Server> late;
  std::thread starter([&] {
    absl::SleepFor(absl::Milliseconds(300));
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:" + std::to_string(port),
                             grpc::InsecureServerCredentials());
    builder.RegisterService(&inference);
    late = builder.BuildAndStart();
  });
  auto out = client->Infer("m", kRow, 4);
  starter.join();
  ASSERT_NE(late, nullptr) << "port " << port << " was taken meanwhile";
  EXPECT_TRUE(out.ok()) << out.status();
  late->Shutdown(absl::ToChronoTime(absl::Now()));
}

// ----------------------------------------------------------------- async

TEST(ClientAsyncTest, CallbacksRunOncePerRequest) {
  TestServer server;
  auto client = MustCreate(FastRetries(server.address()));
  auto request = std::make_shared<const v1::InferRequest>(*MakeInferRequest("m", kRow, 4));
  constexpr int kCalls = 200;
  std::atomic<int> ok{0}, done{0};
  absl::Notification all_done;
  for (int i = 0; i < kCalls; ++i) {
    client->InferAsync(request, [&](absl::StatusOr<v1::InferResponse> response) {
      if (response.ok() && response->output().data() == request->input().data()) ++ok;
      if (++done == kCalls) all_done.Notify();
    });
  }
  ASSERT_TRUE(all_done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(ok.load(), kCalls);
  EXPECT_EQ(server.inference.calls.load(), kCalls);
}

TEST(ClientAsyncTest, ErrorsAndDeadlinesReachTheCallback) {
  TestServer server;
  server.inference.fail_code = grpc::StatusCode::NOT_FOUND;
  server.inference.failures = 1;
  auto client = MustCreate(FastRetries(server.address()));
  auto request = std::make_shared<const v1::InferRequest>(*MakeInferRequest("m", kRow, 4));
  std::promise<absl::Status> first;
  client->InferAsync(request, [&](absl::StatusOr<v1::InferResponse> r) {
    first.set_value(r.status());
  });
  EXPECT_EQ(first.get_future().get().code(), absl::StatusCode::kNotFound);

  server.inference.delay = absl::Milliseconds(500);
  std::promise<absl::Status> late;
  client->InferAsync(request, absl::Milliseconds(50),
                     [&](absl::StatusOr<v1::InferResponse> r) { late.set_value(r.status()); });
  EXPECT_EQ(late.get_future().get().code(), absl::StatusCode::kDeadlineExceeded);
}

TEST(ClientAsyncTest, FutureCarriesTheResponse) {
  TestServer server;
  server.inference.failures = 1;  // retried transparently
  auto client = MustCreate(FastRetries(server.address()));
  auto future = client->InferFuture(*MakeInferRequest("m", kRow, 2));
  auto response = future.get();
  ASSERT_TRUE(response.ok()) << response.status();
  auto out = DecodeInferResponse(*response);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->rows, 2);
  EXPECT_EQ(out->values, kRow);
}

// ----------------------------------------------------------------- streams

TEST(ClientStreamTest, InferStreamAnswersEveryRequest) {
  TestServer server;
  auto client = MustCreate(FastRetries(server.address()));
  auto stream = client->OpenInferStream();
  constexpr int kRequests = 50;
  std::thread writer([&] {
    for (int i = 0; i < kRequests; ++i) {
      v1::InferRequest request = *MakeInferRequest("m", kRow, 4);
      request.set_request_id(absl::StrCat("r", i));
      if (i == 7) request.mutable_input()->clear_shape();  // one bad item
      ASSERT_TRUE(stream->Write(request));
    }
    stream->WritesDone();
  });
  std::set<std::string> ids;
  int errors = 0;
  v1::InferStreamResponse answer;
  while (stream->Read(&answer)) {
    ids.insert(answer.request_id());
    if (answer.has_error()) {
      ++errors;
      EXPECT_EQ(answer.request_id(), "r7");
      EXPECT_EQ(answer.error().code(), 3);
    } else {
      EXPECT_EQ(answer.response().output().data(), MakeTensor(kRow, 4)->data());
    }
  }
  writer.join();
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(ids.size(), static_cast<size_t>(kRequests));
  EXPECT_EQ(errors, 1);
}

// bitnet-load's stream sender (client/load_streams.h).
TEST(StreamSenderTest, EveryItemIsAnsweredOnceOverEveryStream) {
  TestServer server;
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < 2; ++i) {
    ClientOptions o;
    o.address = server.address();
    o.own_connection = true;
    clients.push_back(MustCreate(o));
  }
  auto request = std::make_shared<const v1::InferRequest>(*MakeInferRequest("m", kRow, 4));
  std::atomic<int> ok{0}, failed{0};
  {
    StreamSender sender(clients, /*streams_per_client=*/2, absl::Seconds(30));
    EXPECT_EQ(sender.streams(), 4u);
    for (size_t i = 0; i < 200; ++i) {
      sender.Send(i, request, [&](absl::StatusCode code) {
        (code == absl::StatusCode::kOk ? ok : failed).fetch_add(1);
      });
    }
    sender.Close();  // every item answered before it returns
    EXPECT_EQ(ok.load(), 200);
    EXPECT_EQ(failed.load(), 0);
  }
  EXPECT_EQ(server.inference.calls.load(), 200);
}

TEST(StreamSenderTest, ItemsOfAStreamThatCannotOpenFailWithItsStatus) {
  const int port = UnusedPort();
  std::vector<std::unique_ptr<Client>> clients;
  ClientOptions o;
  o.address = "127.0.0.1:" + std::to_string(port);
  clients.push_back(MustCreate(o));
  auto request = std::make_shared<const v1::InferRequest>(*MakeInferRequest("m", kRow, 4));
  std::atomic<int> unavailable{0}, other{0};
  StreamSender sender(clients, 1, absl::Seconds(5));
  for (size_t i = 0; i < 10; ++i) {
    sender.Send(i, request, [&](absl::StatusCode code) {
      (code == absl::StatusCode::kUnavailable ? unavailable : other).fetch_add(1);
    });
  }
  sender.Close();
  EXPECT_EQ(unavailable.load(), 10);
  EXPECT_EQ(other.load(), 0);
  // After the end, a new item fails at once with the same status.
  absl::StatusCode late = absl::StatusCode::kOk;
  sender.Send(0, request, [&](absl::StatusCode code) { late = code; });
  EXPECT_EQ(late, absl::StatusCode::kUnavailable);
}

TEST(ClientStreamTest, DestroyingAnOpenStreamCancelsIt) {
  TestServer server;
  auto client = MustCreate(FastRetries(server.address()));
  auto stream = client->OpenInferStream(absl::Seconds(30));
  ASSERT_TRUE(stream->Write(*MakeInferRequest("m", kRow, 4)));
  v1::InferStreamResponse answer;
  ASSERT_TRUE(stream->Read(&answer));
  const absl::Time start = absl::Now();
  stream.reset();  // no WritesDone, no Finish
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

// ----------------------------------------------------------------- balancing

TEST(ClientBalancingTest, RoundRobinReachesEveryAddress) {
  TestServer a, b;
  a.inference.name = "a";
  b.inference.name = "b";
  ClientOptions o = FastRetries(a.address() + "," + b.address());
  auto client = MustCreate(o);
  // round_robin sends only to connected addresses: until the second
  // connection is up (which on a loaded machine takes a while) every call
  // goes to the first. So call until both have answered several times, with
  // a deadline, rather than a fixed number of calls.
  std::set<std::string> answered_by;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  int calls = 0;
  while ((a.inference.calls.load() < 5 || b.inference.calls.load() < 5) &&
         std::chrono::steady_clock::now() < deadline) {
    auto request = MakeInferRequest("m", kRow, 4);
    auto response = client->Infer(*request);
    ASSERT_TRUE(response.ok()) << response.status();
    answered_by.insert(response->request_id());
    ++calls;
  }
  SCOPED_TRACE("calls: " + std::to_string(calls));
  EXPECT_EQ(answered_by, (std::set<std::string>{"a", "b"}));
  EXPECT_GE(a.inference.calls.load(), 5);
  EXPECT_GE(b.inference.calls.load(), 5);
}

TEST(ClientBalancingTest, OwnConnectionStillWorks) {
  TestServer server;
  ClientOptions o = FastRetries(server.address());
  o.own_connection = true;
  auto first = MustCreate(o);
  auto second = MustCreate(o);
  EXPECT_TRUE(first->GetModel("m").ok());
  EXPECT_TRUE(second->GetModel("m").ok());
  EXPECT_EQ(server.inference.calls.load(), 2);
}

}  // namespace
}  // namespace bitnet

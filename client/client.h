// bitnet::Client: the C++ client library of bitnet-server (bitnet.v1.Inference,
// bitnet.v1.Admin, grpc.health.v1.Health).
//
//   auto client = bitnet::Client::Create({.address = "localhost:50051"});
//   auto out = (*client)->Infer("demo", rows, /*features=*/64);
//
// Calls:
//   - synchronous: Infer, ListModels, GetModel, Health, and the Admin calls;
//   - asynchronous: InferAsync (callback on a gRPC thread) and InferFuture;
//   - streaming: OpenInferStream (many requests over one HTTP/2 stream),
//     OpenFineTune (Admin.FineTune).
//
// Deadlines: every call gets `ClientOptions::timeout` (streams: the timeout
// passed to Open*), counted once for the whole call, retries included.
//
// Retries (ClientOptions::retry, off unless enabled): idempotent calls
// (Infer, ListModels, GetModel, Admin.GetStats) are retried by gRPC itself
// (service-config retry policy, gRFC A6) on UNAVAILABLE, CANCELLED by the
// server (a call that raced its shutdown) and RESOURCE_EXHAUSTED with
// exponential backoff and jitter: before attempt
// n+1 gRPC 1.51 waits min(initial_backoff * multiplier^(n-1), max_backoff)
// times uniform(0.8, 1.2) (measured by client_test; gRFC A6 describes full
// jitter, uniform(0, bound), which other gRPC versions may use).
// Streams (InferStream, FineTune), health checks and the admin calls that
// change the server (LoadModel, UnloadModel, SaveModel) are never retried.
//
// Errors come back as absl::Status with the gRPC code and the server's
// message unchanged (absl and gRPC share the code numbers).
//
// Thread-safety: a Client may be used from many threads at once (gRPC
// channels and stubs are thread-safe); it holds no per-call state. A stream
// object (InferStream, FineTuneStream) allows one reader thread and one writer
// thread at the same time. The Client must outlive its streams and pending
// async calls.
#ifndef BITNET_CLIENT_CLIENT_H_
#define BITNET_CLIENT_CLIENT_H_

#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "bitnet/v1/admin.pb.h"
#include "bitnet/v1/inference.pb.h"

namespace grpc {
class Channel;
class Status;
}  // namespace grpc

namespace bitnet {

// gRPC retry policy of the idempotent calls (see the file comment).
struct RetryOptions {
  // Off by default: a retry changes what the caller observes (a load test,
  // or a test of the server's own RESOURCE_EXHAUSTED/UNAVAILABLE answers,
  // wants the first status as it is). Applications turn it on; bitnet-cli
  // does (--retries, default 4 attempts).
  bool enabled = false;
  // Attempts in total, the first included: 2..5 (gRPC caps attempts at 5).
  int max_attempts = 4;
  // Upper bound of the first backoff; > 0.
  absl::Duration initial_backoff = absl::Milliseconds(50);
  // Cap of the backoff bound; >= initial_backoff.
  absl::Duration max_backoff = absl::Seconds(2);
  // Growth of the bound per attempt; >= 1.
  double backoff_multiplier = 2.0;
  // Retry on RESOURCE_EXHAUSTED (queue full) as well as UNAVAILABLE.
  bool retry_resource_exhausted = true;
};

struct ClientOptions {
  // Where the server is: "host:port", any gRPC target URI ("dns:///h:p",
  // "ipv4:1.2.3.4:5"), or several "ip:port" separated by commas, which
  // become an "ipv4:"/"ipv6:" target balanced with round_robin (see
  // ChannelTarget).
  std::string address = "localhost:50051";
  // Deadline of every unary call, retries included.
  absl::Duration timeout = absl::Seconds(30);
  // true: a call made while there is no connection (the server not up yet,
  // a reconnect after a dropped connection, a failed connect attempt) waits
  // for one until its deadline instead of failing at once with
  // UNAVAILABLE (gRPC's wait-for-ready). A call already sent when a
  // connection drops still fails. Off by default: a health probe or a CLI
  // call should say at once that the server is unreachable.
  bool wait_for_ready = false;
  RetryOptions retry;
  // TLS (PEM file paths): tls_ca turns TLS on and verifies the server;
  // tls_cert + tls_key add a client certificate (mTLS).
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
  // TLS: the name the server certificate must carry, when it differs from
  // the host in `address` (e.g. connecting to 127.0.0.1 with a certificate
  // for "localhost"). Empty: the host in `address`.
  std::string tls_server_name;
  // Admin bearer token sent with Admin calls (empty: none is sent).
  std::string admin_token;
  // Largest message sent or received.
  int max_message_bytes = 64 << 20;
  // true: this client opens its own TCP connection(s) instead of sharing
  // them with other channels of the process that have the same settings
  // (load generators use one Client per connection).
  bool own_connection = false;
  // "round_robin" or "pick_first"; empty: round_robin for several
  // addresses, gRPC's default (pick_first) otherwise.
  std::string load_balancing;
};

// The gRPC target for `address` (see ClientOptions::address):
// "a:1,b:2" -> "ipv4:a:1,b:2" when every entry is an IPv4 literal ("localhost"
// counts as 127.0.0.1), "ipv6:[::1]:1,[::1]:2" for bracketed IPv6 literals;
// a single entry is returned unchanged. INVALID_ARGUMENT for an empty
// address, an empty entry, an entry without a port, or a host name in a list
// (gRPC's ipv4:/ipv6: schemes take literals only).
absl::StatusOr<std::string> ChannelTarget(std::string_view address);

// The service config (JSON) the client installs: load-balancing policy and
// the retry policy of the idempotent methods. INVALID_ARGUMENT naming the
// option when `options.retry` or `options.load_balancing` is out of range.
absl::StatusOr<std::string> ServiceConfigJson(const ClientOptions& options);

// The result of one Infer call, decoded to fp32.
struct InferOutput {
  std::string model;
  uint64_t version = 0;        // the version that computed it
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<float> values;   // [rows, cols] row-major
  double queue_seconds = 0;    // server-reported timing
  double server_seconds = 0;
};

// absl::Status with the same code and message.
absl::Status FromGrpcStatus(const grpc::Status& status);

// Builds a Tensor [rows, features] from fp32 values, converting to `dtype`
// (FP32, FP16 or BF16, round to nearest even). INVALID_ARGUMENT if
// values.size() is not a multiple of features or dtype is unknown.
absl::StatusOr<v1::Tensor> MakeTensor(std::span<const float> values,
                                      int64_t features,
                                      v1::DType dtype = v1::DTYPE_FP32);

// Decodes a 2-D FP32/FP16/BF16 tensor to fp32 (row-major). INVALID_ARGUMENT
// for another shape rank, a non-positive dimension, an unknown dtype or a
// byte size that does not match the shape.
absl::StatusOr<std::vector<float>> DecodeTensor(const v1::Tensor& tensor);

// Builds an InferRequest from fp32 rows ([rows, features] row-major),
// converting to `dtype` (FP32, FP16 or BF16). INVALID_ARGUMENT if
// rows.size() is not a multiple of features or dtype is unknown.
absl::StatusOr<v1::InferRequest> MakeInferRequest(
    std::string_view model, std::span<const float> rows, int64_t features,
    uint64_t version = 0, v1::DType dtype = v1::DTYPE_FP32);

// Decodes an output tensor (FP32/FP16/BF16, 2-D) to fp32.
absl::StatusOr<InferOutput> DecodeInferResponse(const v1::InferResponse& response);

// A bidirectional Inference.InferStream. Write() requests (each with its own
// request_id), then WritesDone(); Read() answers until it returns false, then
// Finish(). Answers may come in any order: match them by request_id.
// One thread may write while another reads. Destroying an unfinished stream
// cancels it.
class InferStream {
 public:
  virtual ~InferStream() = default;
  // Sends one request; blocks while HTTP/2 flow control is full. false when
  // the stream is broken (Finish() says why).
  virtual bool Write(const v1::InferRequest& request) = 0;
  // Half-closes: no more requests.
  virtual bool WritesDone() = 0;
  // Blocks for the next answer; false when the stream has ended.
  virtual bool Read(v1::InferStreamResponse* response) = 0;
  // Call after Read() returned false: the stream's final status.
  virtual absl::Status Finish() = 0;
  // Cancels the stream (any thread).
  virtual void Cancel() = 0;
};

// An Admin.FineTune stream: Write() the config (first message) and training
// batches, WritesDone(), then Read() progress until the result, then
// Finish(). Same threading rules as InferStream.
class FineTuneStream {
 public:
  virtual ~FineTuneStream() = default;
  virtual bool Write(const v1::FineTuneRequest& request) = 0;
  virtual bool WritesDone() = 0;
  virtual bool Read(v1::FineTuneResponse* response) = 0;
  virtual absl::Status Finish() = 0;
  virtual void Cancel() = 0;
};

class Client {
 public:
  // Connects lazily (the first call connects). Errors: INVALID_ARGUMENT for
  // a bad address (see ChannelTarget), bad retry or balancing options, or
  // unreadable TLS files (naming the option and the path).
  static absl::StatusOr<std::unique_ptr<Client>> Create(ClientOptions options);
  ~Client();

  const ClientOptions& options() const { return options_; }

  // grpc.health.v1.Health/Check: "SERVING", "NOT_SERVING", "UNKNOWN".
  // `service` "" = the whole server, else a model name (NOT_FOUND if the
  // server does not know it).
  absl::StatusOr<std::string> Health(std::string_view service = "");

  absl::StatusOr<v1::ListModelsResponse> ListModels();
  absl::StatusOr<v1::GetModelResponse> GetModel(std::string_view name,
                                                uint64_t version = 0);

  // Runs `rows` ([n, features] fp32) through `model`.
  absl::StatusOr<InferOutput> Infer(std::string_view model,
                                    std::span<const float> rows,
                                    int64_t features, uint64_t version = 0);
  // The raw RPC.
  absl::StatusOr<v1::InferResponse> Infer(const v1::InferRequest& request);

  // Asynchronous Infer: returns at once; `done` runs exactly once, on a gRPC
  // thread, with the response or the error. `done` must not block for long
  // (it holds up other completions); it may start new calls. The request is
  // shared, not copied, so one request may be sent many times concurrently.
  using InferCallback =
      std::function<void(absl::StatusOr<v1::InferResponse> response)>;
  void InferAsync(std::shared_ptr<const v1::InferRequest> request,
                  InferCallback done);
  // Same, with a per-call deadline instead of options().timeout.
  void InferAsync(std::shared_ptr<const v1::InferRequest> request,
                  absl::Duration timeout, InferCallback done);
  // Asynchronous Infer as a future.
  std::future<absl::StatusOr<v1::InferResponse>> InferFuture(
      v1::InferRequest request);

  // Opens Inference.InferStream with a deadline of `timeout` for the whole
  // stream (default: options().timeout). Never retried.
  std::unique_ptr<InferStream> OpenInferStream();
  std::unique_ptr<InferStream> OpenInferStream(absl::Duration timeout);

  // Admin (needs ClientOptions::admin_token). Only GetStats is retried.
  absl::StatusOr<v1::LoadModelResponse> LoadModel(std::string_view name,
                                                  std::string_view path);
  absl::StatusOr<v1::UnloadModelResponse> UnloadModel(std::string_view name,
                                                      uint64_t version = 0);
  absl::StatusOr<v1::GetStatsResponse> GetStats();
  absl::StatusOr<v1::SaveModelResponse> SaveModel(
      const v1::SaveModelRequest& request);
  // Opens Admin.FineTune; `timeout` bounds the whole fine-tune (upload and
  // training). Never retried.
  std::unique_ptr<FineTuneStream> OpenFineTune(absl::Duration timeout);

  // The channel, for callers that want their own stubs.
  std::shared_ptr<grpc::Channel> channel() const { return channel_; }

 private:
  struct Stubs;
  Client(ClientOptions options, std::shared_ptr<grpc::Channel> channel);

  const ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<Stubs> stubs_;
};

}  // namespace bitnet

#endif  // BITNET_CLIENT_CLIENT_H_

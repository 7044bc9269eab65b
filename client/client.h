// bitnet::Client: a small synchronous C++ client for bitnet-server
// (Inference, Admin, grpc.health.v1). Every call has a deadline
// (ClientOptions::timeout); errors come back as absl::Status with the gRPC
// code and the server's message unchanged (absl and gRPC share the codes).
//
// Thread-safety: a Client may be used from many threads at once (gRPC
// channels and stubs are thread-safe); it holds no per-call state.
#ifndef BITNET_CLIENT_CLIENT_H_
#define BITNET_CLIENT_CLIENT_H_

#include <cstdint>
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

struct ClientOptions {
  // host:port of the server.
  std::string address = "localhost:50051";
  // Deadline of every call.
  absl::Duration timeout = absl::Seconds(30);
  // TLS (PEM file paths): tls_ca turns TLS on and verifies the server;
  // tls_cert + tls_key add a client certificate (mTLS).
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
  // Admin bearer token sent with Admin calls (empty: none is sent).
  std::string admin_token;
  // Largest message sent or received.
  int max_message_bytes = 64 << 20;
};

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

// Builds an InferRequest from fp32 rows ([rows, features] row-major),
// converting to `dtype` (FP32, FP16 or BF16). INVALID_ARGUMENT if
// rows.size() is not a multiple of features or dtype is unknown.
absl::StatusOr<v1::InferRequest> MakeInferRequest(
    std::string_view model, std::span<const float> rows, int64_t features,
    uint64_t version = 0, v1::DType dtype = v1::DTYPE_FP32);

// Decodes an output tensor (FP32/FP16/BF16, 2-D) to fp32.
absl::StatusOr<InferOutput> DecodeInferResponse(const v1::InferResponse& response);

class Client {
 public:
  // Connects lazily (the first call connects). Errors: INVALID_ARGUMENT for
  // an empty address or unreadable TLS files.
  static absl::StatusOr<std::unique_ptr<Client>> Create(ClientOptions options);
  ~Client();

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

  // Admin (needs ClientOptions::admin_token).
  absl::StatusOr<v1::LoadModelResponse> LoadModel(std::string_view name,
                                                  std::string_view path);
  absl::StatusOr<v1::UnloadModelResponse> UnloadModel(std::string_view name,
                                                      uint64_t version = 0);
  absl::StatusOr<v1::GetStatsResponse> GetStats();

  // The channel, for callers that want their own stubs (streams, async).
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

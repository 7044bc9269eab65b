// bitnet.v1.Inference on the gRPC callback API.
//
// Handlers validate, enqueue into the model's batcher and return; the batch
// completion (a batcher thread) encodes the output and finishes the reactor.
// No handler blocks a gRPC thread. See proto/bitnet/v1/inference.proto and
// docs/api.md for the status codes.
//
// Thread-safety: the service is stateless beyond `state`; gRPC calls it from
// many threads concurrently.
#ifndef BITNET_SERVER_SERVICE_INFERENCE_SERVICE_H_
#define BITNET_SERVER_SERVICE_INFERENCE_SERVICE_H_

#include "bitnet/v1/inference.grpc.pb.h"
#include "server/service/serving_state.h"

namespace bitnet {

inline constexpr char kInferenceServiceName[] = "bitnet.v1.Inference";

class InferenceService final : public v1::Inference::CallbackService {
 public:
  // `state` is not owned and must outlive the gRPC server.
  explicit InferenceService(ServingState* state) : state_(state) {}

  grpc::ServerUnaryReactor* Infer(grpc::CallbackServerContext* context,
                                  const v1::InferRequest* request,
                                  v1::InferResponse* response) override;
  grpc::ServerBidiReactor<v1::InferRequest, v1::InferStreamResponse>*
  InferStream(grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* context,
                                     const v1::GetModelRequest* request,
                                     v1::GetModelResponse* response) override;

 private:
  ServingState* const state_;
};

// Fills a GetModelResponse for one loaded version (shared with Admin).
void DescribeModelVersion(ServingState& state, const ModelVersion& version,
                          v1::GetModelResponse* out);

}  // namespace bitnet

#endif  // BITNET_SERVER_SERVICE_INFERENCE_SERVICE_H_

// The reactor of our unary calls: gRPC's default one, plus the call counted
// live in ServingState from the handler until OnDone, when its answer has
// been handed to the transport. The drain waits for no live call before it
// closes connections at once (InferenceServer::Drain); the stream reactors
// (InferStream, FineTune) count themselves the same way.
#ifndef BITNET_SERVER_SERVICE_LIVE_CALL_REACTOR_H_
#define BITNET_SERVER_SERVICE_LIVE_CALL_REACTOR_H_

#include <grpcpp/support/server_callback.h>

#include "server/service/serving_state.h"

namespace bitnet {

class LiveCallReactor final : public grpc::ServerUnaryReactor {
 public:
  // Deletes itself in OnDone.
  explicit LiveCallReactor(ServingState* state) : state_(state) { state_->CallStarted(); }

  void OnDone() override {
    state_->CallDone();
    delete this;
  }

 private:
  ServingState* const state_;
};

}  // namespace bitnet

#endif  // BITNET_SERVER_SERVICE_LIVE_CALL_REACTOR_H_

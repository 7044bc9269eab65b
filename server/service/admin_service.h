// bitnet.v1.Admin on the gRPC callback API.
//
// Every RPC first checks the bearer token (admin_auth.h). LoadModel,
// UnloadModel and SaveModel block on file I/O, device uploads and batcher
// shutdown, so they run on the service's own worker thread, one at a time,
// and finish their reactor from there: no gRPC thread is blocked. GetStats
// answers inline. FineTune is a bidirectional-stream reactor: the gRPC
// threads only decode the streamed examples; training runs on a thread of
// its own (finetune_manager.h), which also writes the progress messages.
//
// Thread-safety: gRPC calls the handlers from many threads concurrently.
#ifndef BITNET_SERVER_SERVICE_ADMIN_SERVICE_H_
#define BITNET_SERVER_SERVICE_ADMIN_SERVICE_H_

#include <deque>
#include <functional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include <memory>

#include "bitnet/v1/admin.grpc.pb.h"
#include "server/service/finetune_manager.h"
#include "server/service/serving_state.h"

namespace bitnet {

inline constexpr char kAdminServiceName[] = "bitnet.v1.Admin";

class AdminService final : public v1::Admin::CallbackService {
 public:
  // `state` is not owned and must outlive this service. Starts the worker.
  // `finetune` sets the fine-tuning limits.
  explicit AdminService(ServingState* state,
                        FineTuneManagerOptions finetune = {});
  // Runs the queued work to completion and joins the worker. Destroy after
  // the gRPC server has shut down (no new calls can arrive).
  ~AdminService() override;

  grpc::ServerUnaryReactor* LoadModel(grpc::CallbackServerContext* context,
                                      const v1::LoadModelRequest* request,
                                      v1::LoadModelResponse* response) override;
  grpc::ServerUnaryReactor* UnloadModel(
      grpc::CallbackServerContext* context,
      const v1::UnloadModelRequest* request,
      v1::UnloadModelResponse* response) override;
  grpc::ServerUnaryReactor* GetStats(grpc::CallbackServerContext* context,
                                     const v1::GetStatsRequest* request,
                                     v1::GetStatsResponse* response) override;
  grpc::ServerBidiReactor<v1::FineTuneRequest, v1::FineTuneResponse>*
  FineTune(grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* SaveModel(grpc::CallbackServerContext* context,
                                      const v1::SaveModelRequest* request,
                                      v1::SaveModelResponse* response) override;

  FineTuneManager& finetune() { return *finetune_; }

 private:
  void WorkerLoop();
  void RunOnWorker(std::function<void()> work);

  ServingState* const state_;
  // Destroyed after the worker is joined (the destructor body), before
  // state_: cancels and joins running fine-tunes.
  std::unique_ptr<FineTuneManager> finetune_;
  absl::Mutex mu_;
  std::deque<std::function<void()>> work_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread worker_;
};

}  // namespace bitnet

#endif  // BITNET_SERVER_SERVICE_ADMIN_SERVICE_H_

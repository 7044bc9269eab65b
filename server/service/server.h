// The bitnet-server process in one object: backend, model registry (one
// dynamic batcher per model), gRPC server (Inference, Admin, grpc.health.v1,
// reflection), metrics and the /metrics HTTP endpoint. main() builds one from
// flags; integration tests build one in-process on ephemeral ports.
#ifndef BITNET_SERVER_SERVICE_SERVER_H_
#define BITNET_SERVER_SERVICE_SERVER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "server/runtime/backend.h"

namespace grpc {
class Server;
}  // namespace grpc

namespace bitnet {

class Metrics;
class MetricsHttpServer;
class ModelRegistry;
class ServingState;
class InferenceService;
class AdminService;

// The server's version (bitnet_build_info{version}).
std::string_view ServerVersion();

struct ServerOptions {
  // gRPC listen address; port 0 picks a free port (see InferenceServer::port).
  std::string address = "0.0.0.0";
  int port = 50051;
  // Prometheus /metrics over HTTP; port 0 picks a free port, -1 disables.
  std::string metrics_address = "0.0.0.0";
  int metrics_port = 9090;

  // Directory LoadModel paths are confined to; empty disables LoadModel.
  // Relative paths in `models` are resolved against it when it is set.
  std::string model_repository;
  // Models served from the start: (name, model file path).
  std::vector<std::pair<std::string, std::string>> models;
  // When `models` is empty: the embedded demo model served as "demo":
  // "large" (4096 -> 11008 -> 4096), "small" (64 -> 128 -> 32) or "none".
  std::string demo_model = "large";

  // "auto" (GPU if one is visible), "all" (every visible GPU), "cpu",
  // "cuda:N", or a list ("cuda:0,cuda:1", "cpu,cpu"): one model instance per
  // device (server/runtime/device_list.h).
  std::string device = "auto";
  // Threads of the CPU backend per batch (<= 0: all hardware threads).
  int cpu_threads = 0;
  // Tests: a ready backend, used instead of `device`.
  std::shared_ptr<Backend> backend;
  // Tests: ready backends, one model instance each, used instead of
  // `device` and `backend` when not empty.
  std::vector<std::shared_ptr<Backend>> backends;

  // Dynamic batching (per model).
  int64_t preferred_batch_rows = 128;
  int64_t max_batch_rows = 512;
  absl::Duration max_queue_delay = absl::Milliseconds(2);
  // A batch of >= preferred_batch_rows keeps waiting while rows keep
  // arriving, until they pause this long (BatcherOptions::arrival_gap).
  absl::Duration batch_arrival_gap = absl::Microseconds(250);
  // Threads per model instance that deliver answers (encode + send).
  int completion_threads = 8;
  int64_t max_queue_rows = 8192;
  // Largest single request; must be <= max_batch_rows.
  int64_t max_request_rows = 512;
  // Versions of one model kept loaded (older ones are unloaded).
  int max_loaded_versions = 2;
  // Several devices: keep a connection's requests on one instance while it
  // is at most a batch behind (ModelRegistryOptions::affinity).
  bool connection_affinity = true;
  // Largest gRPC message received or sent (RESOURCE_EXHAUSTED beyond).
  int64_t max_message_bytes = 64 << 20;

  // Admin: a file holding the bearer token (admin off when both empty), or
  // the token itself (tests).
  std::string admin_token_file;
  std::string admin_token;
  // Admin: client certificate identities (CN or SAN) allowed without the
  // token; needs tls_ca (mTLS), so that the certificate was verified.
  std::vector<std::string> admin_client_names;

  // TLS: PEM files. cert + key turn TLS on; ca additionally requires and
  // verifies client certificates (mTLS).
  std::string tls_cert;
  std::string tls_key;
  std::string tls_ca;

  // SIGTERM: how long queued and running work may take before the server
  // cancels what is left and exits.
  absl::Duration drain_grace_period = absl::Seconds(30);

  // Load the initial models on a background thread after the gRPC server is
  // up (health NOT_SERVING and Infer UNAVAILABLE until done), instead of
  // inside Create(). bitnet-server does; tests usually do not.
  bool load_models_in_background = false;
  // Tests: called on the loading thread before each initial model is
  // loaded (e.g. to hold a load and observe UNAVAILABLE).
  std::function<void(std::string_view model_name)> before_model_load;
};

// Checks ranges and combinations; INVALID_ARGUMENT naming the option (with
// its flag name) otherwise.
absl::Status ValidateServerOptions(const ServerOptions& options);

// Parses "--models": "name=path,name2=path2". INVALID_ARGUMENT naming the
// bad entry.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>>
ParseModelList(std::string_view list);

// Thread-safety: Drain() and the accessors may be called from any thread.
class InferenceServer {
 public:
  // Builds and starts everything. Errors: INVALID_ARGUMENT (options),
  // the backend's error (e.g. UNAVAILABLE for cuda:N without a GPU), a model
  // file's error (when loading in the foreground), UNAVAILABLE when an
  // address cannot be bound, the admin token file's error.
  static absl::StatusOr<std::unique_ptr<InferenceServer>> Create(
      ServerOptions options);
  // Drains with a zero grace period if Drain() was not called.
  ~InferenceServer();

  int port() const { return port_; }
  // -1 when metrics are disabled.
  int metrics_port() const;

  // Blocks until the initial models are loaded; their first error, if any.
  absl::Status WaitForInitialModels();

  // SIGTERM behaviour: health NOT_SERVING, new calls UNAVAILABLE, queued and
  // running work completes (up to drain_grace_period, after which the gRPC
  // server cancels the calls still open), then the gRPC server, the batchers
  // and the metrics endpoint stop. Returns true if all work finished within
  // the grace period. Idempotent (later calls return true at once).
  // A batch stuck on a device keeps its call open, and gRPC's shutdown waits
  // for it: callers that must exit on time (main) run Drain on a watchdog.
  bool Drain();
  bool Drain(absl::Duration grace_period);

  ServingState& state() { return *state_; }
  Metrics& metrics() { return *metrics_; }
  ModelRegistry& registry() { return *registry_; }
  const ServerOptions& options() const { return options_; }

 private:
  explicit InferenceServer(ServerOptions options);
  absl::Status LoadInitialModels();

  ServerOptions options_;
  // Declaration order is destruction order reversed: the gRPC server goes
  // first, then the services, the registry (its batchers' observers use the
  // state and the metrics), the state and the metrics.
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<ServingState> state_;
  std::unique_ptr<ModelRegistry> registry_;
  std::unique_ptr<InferenceService> inference_service_;
  std::unique_ptr<AdminService> admin_service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<MetricsHttpServer> metrics_http_;
  int port_ = 0;

  std::thread loader_;
  absl::Notification initial_models_loaded_;
  absl::Status initial_load_status_;

  absl::Mutex drain_mu_;
  bool drained_ ABSL_GUARDED_BY(drain_mu_) = false;
};

}  // namespace bitnet

#endif  // BITNET_SERVER_SERVICE_SERVER_H_

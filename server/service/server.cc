#include "server/service/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <climits>
#include <filesystem>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "server/metrics/metrics.h"
#include "server/metrics/metrics_http.h"
#include "server/model/demo_model.h"
#include "server/model/model_file.h"
#include "server/model/safetensors.h"
#include "server/registry/model_registry.h"
#include "server/service/admin_auth.h"
#include "server/service/admin_service.h"
#include "server/service/event_log.h"
#include "server/service/inference_service.h"
#include "server/service/serving_state.h"

#ifndef BITNET_VERSION
#define BITNET_VERSION "0.0.0-dev"
#endif

namespace bitnet {
namespace {

// Debian's Abseil is built with its own absl::string_view (not
// std::string_view), so std::string_view values are converted explicitly
// before they reach absl::StrCat and friends.
inline absl::string_view AV(std::string_view s) { return {s.data(), s.size()}; }

// How long a drain that found every answer out still lets gRPC's shutdown
// wait for clients before it closes their connections (see Drain).
constexpr absl::Duration kCloseIdleConnectionsAfter = absl::Seconds(1);


#ifdef BITNET_WITH_CUDA
constexpr bool kBuiltWithCuda = true;
#else
constexpr bool kBuiltWithCuda = false;
#endif

absl::StatusOr<std::string> ReadPem(const std::string& path,
                                    std::string_view flag) {
  auto contents = safetensors::ReadFileToString(path);
  if (!contents.ok()) {
    return absl::Status(contents.status().code(),
                        absl::StrCat("--", AV(flag), "=", path, ": ",
                                     contents.status().message()));
  }
  return contents;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeCredentials(
    const ServerOptions& options) {
  if (options.tls_cert.empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions ssl(
      options.tls_ca.empty()
          ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
          : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  auto cert = ReadPem(options.tls_cert, "tls_cert");
  if (!cert.ok()) return cert.status();
  auto key = ReadPem(options.tls_key, "tls_key");
  if (!key.ok()) return key.status();
  ssl.pem_key_cert_pairs.push_back({*key, *cert});
  if (!options.tls_ca.empty()) {
    auto ca = ReadPem(options.tls_ca, "tls_ca");
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *ca;
  }
  return grpc::SslServerCredentials(ssl);
}

}  // namespace

std::string_view ServerVersion() { return BITNET_VERSION; }

absl::Status ValidateServerOptions(const ServerOptions& o) {
  auto bad = [](std::string_view flag, auto value, std::string_view expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", AV(flag), "=", value, ": expected ", AV(expected)));
  };
  if (o.port < 0 || o.port > 65535) return bad("port", o.port, "0..65535");
  if (o.metrics_port < -1 || o.metrics_port > 65535) {
    return bad("metrics_port", o.metrics_port, "-1 (off) or 0..65535");
  }
  if (o.preferred_batch_rows < 1) {
    return bad("preferred_batch_rows", o.preferred_batch_rows, ">= 1");
  }
  if (o.max_batch_rows < o.preferred_batch_rows) {
    return bad("max_batch_rows", o.max_batch_rows,
               absl::StrCat(">= --preferred_batch_rows (",
                            o.preferred_batch_rows, ")"));
  }
  if (o.max_request_rows < 1 || o.max_request_rows > o.max_batch_rows) {
    return bad("max_request_rows", o.max_request_rows,
               absl::StrCat("1..--max_batch_rows (", o.max_batch_rows,
                            "): a request is never split across batches"));
  }
  if (o.max_queue_rows < o.max_request_rows) {
    return bad("max_queue_rows", o.max_queue_rows,
               absl::StrCat(">= --max_request_rows (", o.max_request_rows,
                            ")"));
  }
  if (o.max_queue_delay < absl::ZeroDuration()) {
    return bad("max_queue_delay", absl::FormatDuration(o.max_queue_delay),
               ">= 0");
  }
  // A gap longer than max_queue_delay is harmless: the delay bounds the
  // wait either way (so --max_queue_delay=0 works without touching it).
  if (o.batch_arrival_gap < absl::ZeroDuration() ||
      o.batch_arrival_gap == absl::InfiniteDuration()) {
    return bad("batch_arrival_gap", absl::FormatDuration(o.batch_arrival_gap),
               "finite and >= 0");
  }
  if (o.completion_threads < 1 || o.completion_threads > 256) {
    return bad("completion_threads", o.completion_threads, "1..256");
  }
  if (o.drain_grace_period < absl::ZeroDuration()) {
    return bad("drain_grace_period",
               absl::FormatDuration(o.drain_grace_period), ">= 0");
  }
  if (o.max_message_bytes < 1024 || o.max_message_bytes > INT_MAX) {
    return bad("max_message_bytes", o.max_message_bytes,
               absl::StrCat("1024..", INT_MAX));
  }
  DemoModelSize demo_size;
  if (o.demo_model != "none" && !ParseDemoModelSize(o.demo_model, &demo_size)) {
    return bad("demo_model", o.demo_model, "large, small, deep or none");
  }
  if (o.max_loaded_versions < 1) {
    return bad("max_loaded_versions", o.max_loaded_versions, ">= 1");
  }
  if (o.tls_cert.empty() != o.tls_key.empty()) {
    return absl::InvalidArgumentError(
        "--tls_cert and --tls_key: expected both or neither");
  }
  if (!o.tls_ca.empty() && o.tls_cert.empty()) {
    return absl::InvalidArgumentError(
        "--tls_ca: expected --tls_cert and --tls_key as well (mTLS needs a "
        "server certificate)");
  }
  if (!o.admin_client_names.empty() && o.tls_ca.empty()) {
    return absl::InvalidArgumentError(
        "--admin_client_names: expected --tls_ca as well (only a client "
        "certificate the server verified can name an admin identity)");
  }
  for (const std::string& name : o.admin_client_names) {
    if (name.empty()) {
      return absl::InvalidArgumentError("--admin_client_names: an empty name");
    }
  }
  if (o.cpu_threads < 0) return bad("cpu_threads", o.cpu_threads, ">= 0");
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>>
ParseModelList(std::string_view list) {
  std::vector<std::pair<std::string, std::string>> models;
  std::set<std::string> names;
  for (absl::string_view entry :
       absl::StrSplit(AV(list), ',', absl::SkipEmpty())) {
    std::pair<std::string, std::string> kv =
        absl::StrSplit(entry, absl::MaxSplits('=', 1));
    if (kv.first.empty() || kv.second.empty() ||
        entry.find('=') == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--models: entry \"", entry, "\"; expected name=path"));
    }
    if (!names.insert(kv.first).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--models: model name \"", kv.first, "\" appears twice"));
    }
    models.push_back(std::move(kv));
  }
  return models;
}

InferenceServer::InferenceServer(ServerOptions options)
    : options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<InferenceServer>> InferenceServer::Create(
    ServerOptions options) {
  if (absl::Status s = ValidateServerOptions(options); !s.ok()) return s;
  std::unique_ptr<InferenceServer> self(new InferenceServer(std::move(options)));
  const ServerOptions& o = self->options_;

  ServingConfig config;
  config.max_request_rows = o.max_request_rows;
  config.model_repository = o.model_repository;
  config.server_version = std::string(ServerVersion());
  config.admin_token = o.admin_token;
  config.admin_client_names = o.admin_client_names;
  if (!o.admin_token_file.empty()) {
    auto token = ReadAdminToken(o.admin_token_file);
    if (!token.ok()) return token.status();
    config.admin_token = *token;
  }
  if (!o.model_repository.empty() &&
      !std::filesystem::is_directory(o.model_repository)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--model_repository=", o.model_repository,
        ": expected an existing directory"));
  }
  // What the admin check accepts (the log says which).
  const std::string admin_mode =
      config.admin_token.empty()
          ? (config.admin_client_names.empty() ? "off" : "certificate")
          : (config.admin_client_names.empty() ? "token" : "token+certificate");

  self->metrics_ = std::make_unique<Metrics>(ServerVersion(), kBuiltWithCuda);
  self->state_ =
      std::make_unique<ServingState>(std::move(config), self->metrics_.get());

  std::vector<std::shared_ptr<Backend>> backends = o.backends;
  if (backends.empty() && o.backend != nullptr) backends.push_back(o.backend);
  if (backends.empty()) {
    BackendOptions backend_options;
    backend_options.cpu_threads = o.cpu_threads;
    auto created = CreateBackends(o.device, backend_options);
    if (!created.ok()) return created.status();
    backends = std::move(*created);
  }
  std::vector<std::string> devices;
  for (const auto& backend : backends) {
    devices.push_back(backend != nullptr ? backend->device() : "null");
  }

  ModelRegistryOptions registry_options;
  registry_options.batching.preferred_batch_rows = o.preferred_batch_rows;
  registry_options.batching.max_batch_rows = o.max_batch_rows;
  registry_options.batching.max_queue_rows = o.max_queue_rows;
  registry_options.batching.max_queue_delay = o.max_queue_delay;
  registry_options.batching.arrival_gap = o.batch_arrival_gap;
  registry_options.batching.completion_threads = o.completion_threads;
  registry_options.max_loaded_versions = o.max_loaded_versions;
  registry_options.affinity = o.connection_affinity;
  ServingState* state = self->state_.get();
  registry_options.observer_factory = [state](std::string_view name,
                                              std::string_view instance) {
    return state->MakeObserver(name, instance);
  };
  auto registry =
      ModelRegistry::Create(std::move(backends), std::move(registry_options));
  if (!registry.ok()) return registry.status();
  self->registry_ = std::move(*registry);
  self->state_->AttachRegistry(self->registry_.get());

  // Names of the initial models answer UNAVAILABLE ("loading") until ready.
  std::vector<std::string> initial_names;
  for (const auto& [name, path] : o.models) initial_names.push_back(name);
  if (o.models.empty() && o.demo_model != "none") initial_names.push_back("demo");
  for (const auto& name : initial_names) self->state_->MarkLoading(name, true);

  self->inference_service_ = std::make_unique<InferenceService>(state);
  self->admin_service_ = std::make_unique<AdminService>(state);

  auto credentials = MakeCredentials(o);
  if (!credentials.ok()) return credentials.status();
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  const std::string listen = absl::StrCat(o.address, ":", o.port);
  // gRPC sets SO_REUSEPORT by default: a second server started on a port
  // already in use would start "successfully" and the kernel would split
  // new connections between the two processes (an old binary left running
  // silently keeps taking traffic). A port in use is an error instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(listen, *credentials, &self->port_);
  builder.SetMaxReceiveMessageSize(static_cast<int>(o.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(o.max_message_bytes));
  builder.RegisterService(self->inference_service_.get());
  builder.RegisterService(self->admin_service_.get());
  self->server_ = builder.BuildAndStart();
  if (self->server_ == nullptr || self->port_ == 0) {
    return absl::UnavailableError(absl::StrCat(
        "--address/--port: cannot listen on ", listen,
        " (address in use, not permitted, or bad TLS files)"));
  }
  self->state_->SetHealthService(self->server_->GetHealthCheckService());

  if (o.metrics_port >= 0) {
    auto http = MetricsHttpServer::Create(self->metrics_.get(),
                                          o.metrics_address, o.metrics_port);
    if (!http.ok()) {
      return absl::Status(http.status().code(),
                          absl::StrCat("--metrics_address/--metrics_port: ",
                                       http.status().message()));
    }
    self->metrics_http_ = std::move(*http);
  }

  LogEvent(LogLevel::kInfo, "server_started",
           {{"address", listen},
            {"port", absl::StrCat(self->port_)},
            {"metrics_port", absl::StrCat(self->metrics_port())},
            {"device", absl::StrJoin(devices, ",")},
            {"routing", devices.size() < 2 ? "one_device"
                        : o.connection_affinity ? "connection_affinity"
                                                : "soonest"},
            {"version", std::string(ServerVersion())},
            {"cuda_build", kBuiltWithCuda ? "true" : "false"},
            {"tls", o.tls_cert.empty() ? "off" : (o.tls_ca.empty() ? "on" : "mtls")},
            {"admin", admin_mode},
            {"preferred_batch_rows", absl::StrCat(o.preferred_batch_rows)},
            {"max_batch_rows", absl::StrCat(o.max_batch_rows)},
            {"max_queue_delay", absl::FormatDuration(o.max_queue_delay)},
            {"batch_arrival_gap", absl::FormatDuration(o.batch_arrival_gap)}});

  if (o.load_models_in_background) {
    InferenceServer* raw = self.get();
    self->loader_ = std::thread([raw] {
      raw->initial_load_status_ = raw->LoadInitialModels();
      raw->initial_models_loaded_.Notify();
    });
  } else {
    self->initial_load_status_ = self->LoadInitialModels();
    self->initial_models_loaded_.Notify();
    if (!self->initial_load_status_.ok()) return self->initial_load_status_;
  }
  return self;
}

absl::Status InferenceServer::LoadInitialModels() {
  const ServerOptions& o = options_;
  absl::Status first_error;
  auto load = [&](const std::string& name, absl::StatusOr<Model> model,
                  const std::string& source) {
    absl::Status status = model.status();
    if (status.ok()) status = state_->LoadModel(name, *model, source).status();
    state_->MarkLoading(name, false);
    if (!status.ok() && first_error.ok()) {
      first_error = absl::Status(
          status.code(), absl::StrCat("model \"", name, "\" (", source,
                                      "): ", status.message()));
    }
  };
  for (const auto& [name, path] : o.models) {
    if (o.before_model_load) o.before_model_load(name);
    std::filesystem::path file(path);
    if (file.is_relative() && !o.model_repository.empty()) {
      file = std::filesystem::path(o.model_repository) / file;
    }
    load(name, ReadModelFile(file.string()), file.string());
  }
  if (o.models.empty() && o.demo_model != "none") {
    if (o.before_model_load) o.before_model_load("demo");
    DemoModelSize size = DemoModelSize::kLarge;
    ParseDemoModelSize(o.demo_model, &size);  // validated above
    load("demo", MakeDemoModel(size), absl::StrCat("demo:", o.demo_model));
  }
  if (first_error.ok()) state_->SetOverallServing(true);
  return first_error;
}

int InferenceServer::metrics_port() const {
  return metrics_http_ == nullptr ? -1 : metrics_http_->port();
}

absl::Status InferenceServer::WaitForInitialModels() {
  initial_models_loaded_.WaitForNotification();
  return initial_load_status_;
}

bool InferenceServer::Drain() { return Drain(options_.drain_grace_period); }

bool InferenceServer::Drain(absl::Duration grace_period) {
  absl::MutexLock lock(&drain_mu_);
  if (drained_) return true;
  drained_ = true;
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + grace_period;
  LogEvent(LogLevel::kInfo, "drain_started",
           {{"grace_period", absl::FormatDuration(grace_period)}});
  state_->BeginDrain();
  const bool idle = state_->AwaitIdle(deadline);
  // Open streams have nothing in flight now: end them (UNAVAILABLE
  // "draining") so that their clients move to another replica and the
  // live-call count below can reach zero.
  if (idle) state_->EndStreamsForDrain();
  // Every unit of work is answered. gRPC's Shutdown(deadline) sends GOAWAY
  // and then waits for every call to end and for the clients to close their
  // connections; an idle keep-alive connection never closes, so every exit
  // took the whole grace period. Once no call is live (every answer handed
  // to the transport), the shutdown deadline becomes 1 s away: enough for
  // the clients to see the GOAWAY and for calls racing it to be refused
  // ("draining") instead of being cut by the forced close, which then only
  // finds idle connections. A stream still open (a fine-tune past the grace
  // period, a stream whose answers the client does not read) is a live call
  // and keeps the grace period; anything still running then is cancelled.
  const bool answered = idle && state_->AwaitNoLiveCalls(deadline);
  const absl::Time shutdown_deadline =
      answered ? std::min(deadline, absl::Now() + kCloseIdleConnectionsAfter) : deadline;
  server_->Shutdown(absl::ToChronoTime(std::max(shutdown_deadline, absl::Now())));
  registry_->Shutdown();
  if (loader_.joinable()) loader_.join();
  if (metrics_http_ != nullptr) metrics_http_->Stop();
  LogEvent(LogLevel::kInfo, "drain_finished",
           {{"idle_before_deadline", idle ? "true" : "false"},
            {"answers_out_before_deadline", answered ? "true" : "false"},
            {"seconds", absl::StrCat(absl::ToDoubleSeconds(absl::Now() - start))}});
  return idle;
}

InferenceServer::~InferenceServer() {
  if (server_ != nullptr) Drain(absl::ZeroDuration());
  if (loader_.joinable()) loader_.join();
}

}  // namespace bitnet

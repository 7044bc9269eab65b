// bitnet-server: serves BitNet b1.58 ternary models over gRPC.
//
// With no flags it serves the embedded demo model ("demo", 4096 -> 11008 ->
// 4096) on the GPU if one is visible, else on the CPU, on port 50051, with
// Prometheus metrics on :9090/metrics. --device=all (or a list such as
// cuda:0,cuda:1) serves every model on several GPUs in one process, one
// model instance per GPU. SIGTERM or SIGINT drains: health goes
// NOT_SERVING, new calls get UNAVAILABLE, queued and running work completes,
// and the process exits within --drain_grace_period.
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "server/model/demo_model.h"
#include "server/model/model_file.h"
#include "server/service/event_log.h"
#include "server/service/server.h"

ABSL_FLAG(std::string, address, "0.0.0.0", "gRPC listen address (host)");
ABSL_FLAG(int, port, 50051, "gRPC listen port (0 picks a free port)");
ABSL_FLAG(std::string, metrics_address, "0.0.0.0",
          "Prometheus /metrics HTTP listen address (host)");
ABSL_FLAG(int, metrics_port, 9090,
          "Prometheus /metrics HTTP port (0 picks a free port, -1 disables)");
ABSL_FLAG(std::string, model_repository, "",
          "Directory that Admin.LoadModel paths are confined to (empty: "
          "LoadModel disabled); relative --models paths are resolved in it");
ABSL_FLAG(std::string, models, "",
          "Models to serve at start: name=path[,name=path...] (model files "
          "written by bitnet-pack). Empty: the demo model (--demo_model)");
ABSL_FLAG(std::string, demo_model, "large",
          "Demo model served as \"demo\" when --models is empty: large "
          "(4096->11008->4096), small (64->128->32), deep (large's two "
          "layers as 24 blocks, 2.2 G weights: GPU-bound load tests) or "
          "none");
ABSL_FLAG(std::string, write_demo_model, "",
          "Write the --demo_model model to this file (safetensors) and exit");
ABSL_FLAG(std::string, device, "auto",
          "Where models run, one model instance (weights + batcher) per "
          "device: auto (the first GPU if one is visible, else the CPU), all "
          "(every visible GPU, else the CPU), cpu, cuda:N, or a list such as "
          "cuda:0,cuda:1 (cpu may repeat: cpu,cpu). Requests go to the "
          "instance that will answer soonest (see --connection_affinity)");
ABSL_FLAG(bool, connection_affinity, true,
          "With several devices: a client connection's requests stay on one "
          "instance (connections get instances in turn) unless it is more "
          "than a batch behind the soonest, so that each device batches its "
          "clients as a one-device server would; false: every request goes "
          "to the instance that will answer soonest");
ABSL_FLAG(int, cpu_threads, 0,
          "Threads of the CPU backend per batch (0: all hardware threads)");
ABSL_FLAG(int64_t, preferred_batch_rows, 128,
          "A batch of at least this many rows goes to a free device as soon "
          "as arrivals pause for --batch_arrival_gap; smaller batches wait "
          "up to --max_queue_delay for more rows");
ABSL_FLAG(int64_t, max_batch_rows, 512, "Largest batch (rows)");
ABSL_FLAG(absl::Duration, max_queue_delay, absl::Milliseconds(2),
          "Longest time the oldest queued request waits for a fuller batch "
          "once the device is free");
ABSL_FLAG(absl::Duration, batch_arrival_gap, absl::Microseconds(250),
          "A batch of >= --preferred_batch_rows rows keeps gathering rows "
          "while they keep arriving, and leaves once none has arrived for "
          "this long (0: leave at once; never beyond --max_queue_delay)");
ABSL_FLAG(int, completion_threads, 8,
          "Threads per model instance that encode and send answers, so the "
          "device starts the next batch at once");
ABSL_FLAG(int64_t, max_queue_rows, 8192,
          "Rows queued per model beyond which requests get RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, max_request_rows, 512,
          "Most rows in one InferRequest (<= --max_batch_rows)");
ABSL_FLAG(int, max_loaded_versions, 2,
          "Versions of one model kept loaded; loading more unloads the oldest");
ABSL_FLAG(int64_t, max_message_bytes, 64 << 20,
          "Largest gRPC message received or sent (RESOURCE_EXHAUSTED beyond)");
ABSL_FLAG(std::string, admin_token_file, "",
          "File holding the admin bearer token (>= 16 characters); Admin RPCs "
          "are disabled without it");
ABSL_FLAG(std::vector<std::string>, admin_client_names, {},
          "With --tls_ca: client certificate identities (Common Name or "
          "subject alternative name, comma-separated) allowed to call Admin "
          "RPCs without the token");
ABSL_FLAG(std::string, tls_cert, "", "PEM server certificate (enables TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM server private key");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM CA bundle: require and verify client certificates (mTLS)");
ABSL_FLAG(absl::Duration, drain_grace_period, absl::Seconds(30),
          "On SIGTERM: how long queued and running work may take before the "
          "server cancels what is left and exits");

namespace {

int Fail(const std::string& event, const absl::Status& status) {
  bitnet::LogEvent(bitnet::LogLevel::kError, event,
                   {{"error", status.ToString()}});
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Serves BitNet b1.58 ternary models over gRPC (bitnet.v1.Inference, "
      "bitnet.v1.Admin, grpc.health.v1, reflection).\n"
      "Usage: bitnet-server [--flags]; with no flags it serves the demo "
      "model on :50051, metrics on :9090/metrics.");
  // --help lists the flags of this file (Abseil's default filter expects
  // the file to be named after the binary).
  absl::FlagsUsageConfig usage_config;
  usage_config.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "server/main.cc");
  };
  usage_config.contains_helpshort_flags = usage_config.contains_help_flags;
  absl::SetFlagsUsageConfig(usage_config);
  absl::ParseCommandLine(argc, argv);
  // Debian builds Abseil without NDEBUG, so every absl::Mutex acquisition
  // would feed its deadlock detector, a global graph behind one lock: under
  // tens of thousands of requests per second that serializes the server's
  // threads (it showed as ~4% of CPU on 2 cores, more contended on 16).
  // The tests keep it on; the lock order is checked there.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  // CUDA loads kernels lazily by default (CUDA_MODULE_LOADING=LAZY): the
  // first batch of each new shape would pay for loading its kernel while
  // requests wait. Load them all when the device is first used instead,
  // unless the operator chose otherwise.
  setenv("CUDA_MODULE_LOADING", "EAGER", /*overwrite=*/0);

  if (const std::string out = absl::GetFlag(FLAGS_write_demo_model);
      !out.empty()) {
    const std::string size = absl::GetFlag(FLAGS_demo_model);
    bitnet::DemoModelSize demo_size;
    if (!bitnet::ParseDemoModelSize(size, &demo_size)) {
      return Fail("write_demo_model_failed",
                  absl::InvalidArgumentError(
                      "--demo_model: expected large, small or deep"));
    }
    const bitnet::Model model = bitnet::MakeDemoModel(demo_size);
    if (absl::Status s = bitnet::WriteModelFile(model, out); !s.ok()) {
      return Fail("write_demo_model_failed", s);
    }
    bitnet::LogEvent(bitnet::LogLevel::kInfo, "demo_model_written",
                     {{"path", out}, {"size", size}});
    return 0;
  }

  // Block the termination signals in every thread (all threads are created
  // after this point and inherit the mask); the main thread takes them with
  // sigwait, so no async-signal-safety issue arises.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  bitnet::ServerOptions options;
  options.address = absl::GetFlag(FLAGS_address);
  options.port = absl::GetFlag(FLAGS_port);
  options.metrics_address = absl::GetFlag(FLAGS_metrics_address);
  options.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  options.model_repository = absl::GetFlag(FLAGS_model_repository);
  auto models = bitnet::ParseModelList(absl::GetFlag(FLAGS_models));
  if (!models.ok()) return Fail("bad_flags", models.status());
  options.models = *models;
  options.demo_model = absl::GetFlag(FLAGS_demo_model);
  options.device = absl::GetFlag(FLAGS_device);
  options.cpu_threads = absl::GetFlag(FLAGS_cpu_threads);
  options.preferred_batch_rows = absl::GetFlag(FLAGS_preferred_batch_rows);
  options.max_batch_rows = absl::GetFlag(FLAGS_max_batch_rows);
  options.max_queue_delay = absl::GetFlag(FLAGS_max_queue_delay);
  options.batch_arrival_gap = absl::GetFlag(FLAGS_batch_arrival_gap);
  options.completion_threads = absl::GetFlag(FLAGS_completion_threads);
  options.max_queue_rows = absl::GetFlag(FLAGS_max_queue_rows);
  options.max_request_rows = absl::GetFlag(FLAGS_max_request_rows);
  options.max_loaded_versions = absl::GetFlag(FLAGS_max_loaded_versions);
  options.connection_affinity = absl::GetFlag(FLAGS_connection_affinity);
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.admin_token_file = absl::GetFlag(FLAGS_admin_token_file);
  options.admin_client_names = absl::GetFlag(FLAGS_admin_client_names);
  options.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key = absl::GetFlag(FLAGS_tls_key);
  options.tls_ca = absl::GetFlag(FLAGS_tls_ca);
  options.drain_grace_period = absl::GetFlag(FLAGS_drain_grace_period);
  options.load_models_in_background = true;

  auto server = bitnet::InferenceServer::Create(std::move(options));
  if (!server.ok()) return Fail("server_start_failed", server.status());

  // A load failure at start is fatal: an operator asked for that model.
  // Signals are watched meanwhile by nobody, so a SIGTERM during a long load
  // stays pending and is taken right after.
  if (absl::Status s = (*server)->WaitForInitialModels(); !s.ok()) {
    (*server)->Drain(absl::ZeroDuration());
    return Fail("model_load_failed", s);
  }
  bitnet::LogEvent(bitnet::LogLevel::kInfo, "serving",
                   {{"port", absl::StrCat((*server)->port())}});

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  bitnet::LogEvent(bitnet::LogLevel::kInfo, "signal_received",
                   {{"signal", signal_number == SIGTERM ? "SIGTERM" : "SIGINT"}});
  // Drain on a watchdog: a batch stuck on a device would hold gRPC's
  // shutdown forever, and the process must exit within the grace period.
  absl::Notification drained;
  bitnet::InferenceServer* raw = server->get();
  std::thread drainer([raw, &drained] {
    raw->Drain();
    drained.Notify();
  });
  const absl::Duration grace = absl::GetFlag(FLAGS_drain_grace_period);
  if (!drained.WaitForNotificationWithTimeout(grace + absl::Seconds(5))) {
    bitnet::LogEvent(bitnet::LogLevel::kError, "drain_timeout",
                     {{"grace_period", absl::FormatDuration(grace)}});
    std::_Exit(1);
  }
  drainer.join();
  server->reset();
  bitnet::LogEvent(bitnet::LogLevel::kInfo, "exited");
  return 0;
}

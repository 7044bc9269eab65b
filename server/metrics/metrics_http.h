// A small HTTP server for Prometheus scrapes: GET /metrics returns
// Metrics::Serialize() as text/plain; version=0.0.4. Built on cpp-httplib
// (its threads have ordinary 8 MB stacks, unlike prometheus-cpp's civetweb
// Exposer, which crashes against CUDA's static TLS).
//
// Thread-safety: Create/Stop from one thread; requests are served on the
// server's own threads.
#ifndef BITNET_SERVER_METRICS_METRICS_HTTP_H_
#define BITNET_SERVER_METRICS_METRICS_HTTP_H_

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "server/metrics/metrics.h"

namespace httplib {
class Server;
}  // namespace httplib

namespace bitnet {

class MetricsHttpServer {
 public:
  // Binds `host`:`port` (port 0 picks a free port, see port()) and starts
  // serving. `metrics` is not owned and must outlive the server.
  // Errors: UNAVAILABLE when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Create(
      const Metrics* metrics, const std::string& host, int port);
  ~MetricsHttpServer();  // Stops.

  // The bound port.
  int port() const { return port_; }
  // Stops accepting and joins the serving thread. Idempotent.
  void Stop();

 private:
  MetricsHttpServer() = default;

  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  // Notified when the listener thread has returned from listening.
  absl::Notification listener_done_;
  int port_ = 0;
};

}  // namespace bitnet

#endif  // BITNET_SERVER_METRICS_METRICS_HTTP_H_

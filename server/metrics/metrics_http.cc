#include "server/metrics/metrics_http.h"

#include <httplib.h>
#include <sys/socket.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace bitnet {

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Create(
    const Metrics* metrics, const std::string& host, int port) {
  std::unique_ptr<MetricsHttpServer> self(new MetricsHttpServer());
  self->server_ = std::make_unique<httplib::Server>();
  // httplib's default sets SO_REUSEPORT, which lets a second server bind a
  // port already in use and take part of its scrapes. SO_REUSEADDR alone
  // still allows a restart while old connections sit in TIME_WAIT.
  self->server_->set_socket_options([](socket_t sock) {
    const int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  self->server_->Get("/metrics", [metrics](const httplib::Request&,
                                           httplib::Response& response) {
    response.set_content(metrics->Serialize(),
                         "text/plain; version=0.0.4; charset=utf-8");
  });
  self->server_->Get("/", [](const httplib::Request&, httplib::Response& r) {
    r.set_content("bitnet-server: metrics at /metrics\n", "text/plain");
  });
  int bound = 0;
  if (port == 0) {
    bound = self->server_->bind_to_any_port(host);
  } else {
    bound = self->server_->bind_to_port(host, port) ? port : -1;
  }
  if (bound <= 0) {
    return absl::UnavailableError(
        absl::StrCat("metrics: cannot bind HTTP listener to ", host, ":", port,
                     " (address in use or not permitted)"));
  }
  self->port_ = bound;
  httplib::Server* server = self->server_.get();
  absl::Notification* done = &self->listener_done_;
  self->thread_ = std::thread([server, done] {
    server->listen_after_bind();
    done->Notify();
  });
  return self;
}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

void MetricsHttpServer::Stop() {
  if (!thread_.joinable()) return;
  // httplib's stop() does nothing until the listener thread has entered its
  // accept loop (cpp-httplib issue #1645), so a Stop() soon after Create()
  // was lost and the join below waited forever. Ask again until the
  // listener has returned (stop() on a stopped server does nothing).
  do {
    server_->stop();
  } while (
      !listener_done_.WaitForNotificationWithTimeout(absl::Milliseconds(5)));
  thread_.join();
}

}  // namespace bitnet

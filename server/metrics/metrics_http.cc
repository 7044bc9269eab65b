#include "server/metrics/metrics_http.h"

#include <httplib.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace bitnet {

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Create(
    const Metrics* metrics, const std::string& host, int port) {
  std::unique_ptr<MetricsHttpServer> self(new MetricsHttpServer());
  self->server_ = std::make_unique<httplib::Server>();
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
  self->thread_ = std::thread([server] { server->listen_after_bind(); });
  return self;
}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

void MetricsHttpServer::Stop() {
  if (server_ != nullptr) server_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace bitnet

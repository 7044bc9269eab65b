// Every Prometheus metric family of bitnet-serve, defined in one place.
//
// Names, labels and units are fixed by ARCHITECTURE.md ("Metrics"):
//   bitnet_requests_total{model,code}            counter, requests answered by gRPC code name
//   bitnet_rows_total{model}                     counter, rows computed
//   bitnet_request_duration_seconds{model}       histogram, arrival to response
//   bitnet_queue_duration_seconds{model}         histogram, arrival to batch dispatch
//   bitnet_batch_rows{model,device}              histogram, rows per dispatched batch
//   bitnet_batch_compute_seconds{model,device}   histogram, device time per batch
//   bitnet_queue_rows{model,device}              gauge, rows waiting now
//   bitnet_model_info{model,version,backend}     gauge = 1 per loaded version
//   bitnet_device_memory_used_bytes{device}      gauge, model memory per device
//   bitnet_finetune_steps_total{model}           counter (fine-tuning, later issue)
//   bitnet_finetune_loss{model}                  gauge (fine-tuning, later issue)
//   bitnet_build_info{version,cuda}              gauge = 1
//   bitnet_instance_healthy{model,device}        gauge, 1 in rotation, 0 out
//   bitnet_routed_requests_total{model,device,route}  counter, requests routed
//       to the instance when the model has several: route "home" (its
//       connection's instance), "handed_over" (its home was more than a
//       batch behind or out of rotation), "soonest" (no affinity)
//   grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}
//   grpc_server_handling_seconds{grpc_type,grpc_service,grpc_method}  histogram
// `device` on the per-instance families is the model instance's name: its
// device ("cpu", "cuda:1"), or "device#k" when --device lists a device more
// than once ("cpu#0", "cpu#1"). Sum over it for per-model figures.
// The two grpc_* families use go-grpc-prometheus's names and labels so
// existing Grafana dashboards work unchanged (grpc_type is "unary" or
// "bidi_stream", as there).
//
// Exposition: Serialize() renders the Prometheus text format (0.0.4);
// MetricsHttpServer (metrics_http.h) serves it on GET /metrics. We do not use
// prometheus-cpp's pull Exposer: its civetweb threads have a 100 KB stack and
// crash against CUDA's static TLS.
//
// Thread-safety: every method may be called from any thread concurrently
// (prometheus-cpp families and metrics are internally synchronized).
#ifndef BITNET_SERVER_METRICS_METRICS_H_
#define BITNET_SERVER_METRICS_METRICS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace bitnet {

class Metrics {
 public:
  // `version`: the server's version string (bitnet_build_info{version});
  // `cuda`: whether this build has the CUDA backend.
  Metrics(std::string_view version, bool cuda);
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // One answered inference request (any outcome). `code` is the gRPC code
  // name ("OK", "INVALID_ARGUMENT", ...). `rows` counts into
  // bitnet_rows_total only when code == "OK". `seconds` is arrival to
  // response.
  void RecordRequest(std::string_view model, std::string_view code,
                     int64_t rows, double seconds);
  // Time one request waited in the queue before its batch was dispatched.
  void RecordQueueWait(std::string_view model, double seconds);
  // One batch computed by the model's instance `device`.
  void RecordBatch(std::string_view model, std::string_view device,
                   int64_t rows, double compute_seconds);
  // Rows queued for `model` on instance `device` right now.
  void SetQueueRows(std::string_view model, std::string_view device,
                    int64_t rows);
  // Whether instance `device` of `model` is in rotation.
  void SetInstanceHealthy(std::string_view model, std::string_view device,
                          bool healthy);
  // One request of a model with several instances routed to instance
  // `device`; `route` is "home", "handed_over" or "soonest".
  void RecordRoute(std::string_view model, std::string_view device,
                   std::string_view route);
  // Removes the instance's bitnet_instance_healthy series (model unloaded).
  void RemoveInstance(std::string_view model, std::string_view device);

  // Creates the per-model series (zero-valued) so that dashboards and alerts
  // see a model from the moment it is loaded, before its first request.
  void InitModel(std::string_view model);
  // The same for one instance's series (and bitnet_instance_healthy = 1).
  void InitInstance(std::string_view model, std::string_view device);

  // Marks a model version as loaded (gauge 1) or unloaded (series removed).
  void SetModelLoaded(std::string_view model, uint64_t version,
                      std::string_view backend, bool loaded);
  // Memory held by models on `device` ("cpu", "cuda:0").
  void SetDeviceMemory(std::string_view device, int64_t bytes);

  // Fine-tuning (used by a later issue; defined here so every family lives
  // in one place).
  void RecordFinetuneStep(std::string_view model, double loss);

  // One finished RPC, go-grpc-prometheus style. `type` is "unary" or
  // "bidi_stream"; `service` the full service name ("bitnet.v1.Inference").
  void RecordRpc(std::string_view type, std::string_view service,
                 std::string_view method, std::string_view code,
                 double seconds);

  // The whole registry in the Prometheus text exposition format.
  std::string Serialize() const;

  // For tests and embedders that add their own collectables.
  prometheus::Registry& registry();

 private:
  struct Families;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<Families> families_;
};

}  // namespace bitnet

#endif  // BITNET_SERVER_METRICS_METRICS_H_

#include "server/metrics/metrics.h"

#include <map>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace bitnet {
namespace {

using prometheus::Counter;
using prometheus::Family;
using prometheus::Gauge;
using prometheus::Histogram;

// Seconds: 100 us .. 10 s, roughly 1-2.5-5 per decade, and finer from 5 to
// 100 ms, where batched requests' latencies live: a p99 interpolated inside
// a 10-25 ms bucket could not tell 12 ms from 24 ms.
const Histogram::BucketBoundaries& SecondsBuckets() {
  static const auto* buckets = new Histogram::BucketBoundaries{
      0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.0175,
      0.02,   0.025,   0.03,   0.04,  0.05,   0.075, 0.1,    0.25, 0.5,    1,      2.5,
      5,      10};
  return *buckets;
}

// Rows: powers of two, so "batches of >= 128 rows" reads off one bucket.
const Histogram::BucketBoundaries& RowBuckets() {
  static const auto* buckets = new Histogram::BucketBoundaries{
      1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192};
  return *buckets;
}

}  // namespace

struct Metrics::Families {
  explicit Families(prometheus::Registry& r)
      : requests(prometheus::BuildCounter()
                     .Name("bitnet_requests_total")
                     .Help("Inference requests answered, by gRPC status code.")
                     .Register(r)),
        rows(prometheus::BuildCounter()
                 .Name("bitnet_rows_total")
                 .Help("Rows computed for successful inference requests.")
                 .Register(r)),
        request_duration(
            prometheus::BuildHistogram()
                .Name("bitnet_request_duration_seconds")
                .Help("Inference request latency, arrival to response.")
                .Register(r)),
        queue_duration(
            prometheus::BuildHistogram()
                .Name("bitnet_queue_duration_seconds")
                .Help("Time a request waited in the queue before dispatch.")
                .Register(r)),
        batch_rows(prometheus::BuildHistogram()
                       .Name("bitnet_batch_rows")
                       .Help("Rows per batch dispatched to the device.")
                       .Register(r)),
        batch_compute(prometheus::BuildHistogram()
                          .Name("bitnet_batch_compute_seconds")
                          .Help("Device time to compute one batch.")
                          .Register(r)),
        queue_rows(prometheus::BuildGauge()
                       .Name("bitnet_queue_rows")
                       .Help("Rows waiting in the model's queue.")
                       .Register(r)),
        model_info(prometheus::BuildGauge()
                       .Name("bitnet_model_info")
                       .Help("1 for every loaded model version.")
                       .Register(r)),
        device_memory(prometheus::BuildGauge()
                          .Name("bitnet_device_memory_used_bytes")
                          .Help("Bytes of device memory held by models.")
                          .Register(r)),
        finetune_steps(prometheus::BuildCounter()
                           .Name("bitnet_finetune_steps_total")
                           .Help("Fine-tuning optimizer steps.")
                           .Register(r)),
        finetune_loss(prometheus::BuildGauge()
                          .Name("bitnet_finetune_loss")
                          .Help("Loss of the latest fine-tuning step.")
                          .Register(r)),
        instance_healthy(
            prometheus::BuildGauge()
                .Name("bitnet_instance_healthy")
                .Help("1 while a model instance (one per device) is in "
                      "rotation, 0 after a device failure took it out.")
                .Register(r)),
        routed_requests(
            prometheus::BuildCounter()
                .Name("bitnet_routed_requests_total")
                .Help("Requests routed to a model instance (models with "
                      "several): route home (the connection's instance), "
                      "handed_over (home more than a batch behind or out of "
                      "rotation) or soonest (no connection affinity).")
                .Register(r)),
        build_info(prometheus::BuildGauge()
                       .Name("bitnet_build_info")
                       .Help("Always 1; labels describe the build.")
                       .Register(r)),
        grpc_handled(prometheus::BuildCounter()
                         .Name("grpc_server_handled_total")
                         .Help("RPCs completed on the server, by status code.")
                         .Register(r)),
        grpc_handling(prometheus::BuildHistogram()
                          .Name("grpc_server_handling_seconds")
                          .Help("RPC latency until the server finished it.")
                          .Register(r)) {}

  Family<Counter>& requests;
  Family<Counter>& rows;
  Family<Histogram>& request_duration;
  Family<Histogram>& queue_duration;
  Family<Histogram>& batch_rows;
  Family<Histogram>& batch_compute;
  Family<Gauge>& queue_rows;
  Family<Gauge>& model_info;
  Family<Gauge>& device_memory;
  Family<Counter>& finetune_steps;
  Family<Gauge>& finetune_loss;
  Family<Gauge>& instance_healthy;
  Family<Counter>& routed_requests;
  Family<Gauge>& build_info;
  Family<Counter>& grpc_handled;
  Family<Histogram>& grpc_handling;

  // Per-model series, created once: Family::Add constructs a throw-away
  // metric (a histogram allocates its buckets) on every call, which we do
  // not want on the request path.
  struct ModelSeries {
    Counter* rows;
    Histogram* request_duration;
    Histogram* queue_duration;
  };
  // Per (model, instance).
  struct InstanceSeries {
    Histogram* batch_rows;
    Histogram* batch_compute;
    Gauge* queue_rows;
    // Created by InitInstance / SetInstanceHealthy only (a default 0 would
    // read as "unhealthy"); null after RemoveInstance.
    Gauge* healthy;
  };
  std::mutex mu;
  std::map<std::string, ModelSeries, std::less<>> models;
  std::map<std::pair<std::string, std::string>, InstanceSeries> instances;

  ModelSeries& ForModel(std::string_view model) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = models.find(model);
    if (it != models.end()) return it->second;
    const prometheus::Labels labels{{"model", std::string(model)}};
    ModelSeries s{&rows.Add(labels),
                  &request_duration.Add(labels, SecondsBuckets()),
                  &queue_duration.Add(labels, SecondsBuckets())};
    return models.emplace(std::string(model), s).first->second;
  }

  InstanceSeries& ForInstance(std::string_view model, std::string_view device) {
    std::lock_guard<std::mutex> lock(mu);
    std::pair<std::string, std::string> key{std::string(model),
                                            std::string(device)};
    auto it = instances.find(key);
    if (it != instances.end()) return it->second;
    const prometheus::Labels labels{{"model", key.first},
                                    {"device", key.second}};
    InstanceSeries s{&batch_rows.Add(labels, RowBuckets()),
                     &batch_compute.Add(labels, SecondsBuckets()),
                     &queue_rows.Add(labels), nullptr};
    return instances.emplace(std::move(key), s).first->second;
  }
};

Metrics::Metrics(std::string_view version, bool cuda)
    : registry_(std::make_shared<prometheus::Registry>()),
      families_(std::make_unique<Families>(*registry_)) {
  families_->build_info
      .Add({{"version", std::string(version)},
            {"cuda", cuda ? "true" : "false"}})
      .Set(1);
}

Metrics::~Metrics() = default;

void Metrics::RecordRequest(std::string_view model, std::string_view code,
                            int64_t rows, double seconds) {
  families_->requests
      .Add({{"model", std::string(model)}, {"code", std::string(code)}})
      .Increment();
  auto& series = families_->ForModel(model);
  if (code == "OK") series.rows->Increment(static_cast<double>(rows));
  series.request_duration->Observe(seconds);
}

void Metrics::RecordQueueWait(std::string_view model, double seconds) {
  families_->ForModel(model).queue_duration->Observe(seconds);
}

void Metrics::RecordBatch(std::string_view model, std::string_view device,
                          int64_t rows, double compute_seconds) {
  auto& series = families_->ForInstance(model, device);
  series.batch_rows->Observe(static_cast<double>(rows));
  series.batch_compute->Observe(compute_seconds);
}

void Metrics::SetQueueRows(std::string_view model, std::string_view device,
                           int64_t rows) {
  families_->ForInstance(model, device).queue_rows->Set(
      static_cast<double>(rows));
}

void Metrics::SetInstanceHealthy(std::string_view model,
                                 std::string_view device, bool healthy) {
  Families& f = *families_;
  Families::InstanceSeries& series = f.ForInstance(model, device);
  std::lock_guard<std::mutex> lock(f.mu);
  if (series.healthy == nullptr) {
    series.healthy = &f.instance_healthy.Add(
        {{"model", std::string(model)}, {"device", std::string(device)}});
  }
  series.healthy->Set(healthy ? 1 : 0);
}

void Metrics::RecordRoute(std::string_view model, std::string_view device,
                          std::string_view route) {
  families_->routed_requests
      .Add({{"model", std::string(model)},
            {"device", std::string(device)},
            {"route", std::string(route)}})
      .Increment();
}

void Metrics::RemoveInstance(std::string_view model, std::string_view device) {
  // Only the health series goes: the histograms and the queue gauge keep
  // their values, as the per-model series do after an unload.
  Families& f = *families_;
  std::lock_guard<std::mutex> lock(f.mu);
  auto it = f.instances.find({std::string(model), std::string(device)});
  if (it == f.instances.end() || it->second.healthy == nullptr) return;
  f.instance_healthy.Remove(it->second.healthy);
  it->second.healthy = nullptr;
}

void Metrics::InitInstance(std::string_view model, std::string_view device) {
  SetInstanceHealthy(model, device, true);
}

void Metrics::InitModel(std::string_view model) {
  families_->ForModel(model);
  families_->requests
      .Add({{"model", std::string(model)}, {"code", "OK"}});
  families_->finetune_steps.Add({{"model", std::string(model)}});
}

void Metrics::SetModelLoaded(std::string_view model, uint64_t version,
                             std::string_view backend, bool loaded) {
  const prometheus::Labels labels{{"model", std::string(model)},
                                  {"version", absl::StrCat(version)},
                                  {"backend", std::string(backend)}};
  auto& gauge = families_->model_info.Add(labels);
  if (loaded) {
    gauge.Set(1);
  } else {
    families_->model_info.Remove(&gauge);
  }
}

void Metrics::SetDeviceMemory(std::string_view device, int64_t bytes) {
  families_->device_memory.Add({{"device", std::string(device)}})
      .Set(static_cast<double>(bytes));
}

void Metrics::RecordFinetuneStep(std::string_view model, double loss) {
  const prometheus::Labels labels{{"model", std::string(model)}};
  families_->finetune_steps.Add(labels).Increment();
  families_->finetune_loss.Add(labels).Set(loss);
}

void Metrics::RecordRpc(std::string_view type, std::string_view service,
                        std::string_view method, std::string_view code,
                        double seconds) {
  families_->grpc_handled
      .Add({{"grpc_type", std::string(type)},
            {"grpc_service", std::string(service)},
            {"grpc_method", std::string(method)},
            {"grpc_code", std::string(code)}})
      .Increment();
  families_->grpc_handling
      .Add({{"grpc_type", std::string(type)},
            {"grpc_service", std::string(service)},
            {"grpc_method", std::string(method)}},
           SecondsBuckets())
      .Observe(seconds);
}

std::string Metrics::Serialize() const {
  prometheus::TextSerializer serializer;
  return serializer.Serialize(registry_->Collect());
}

prometheus::Registry& Metrics::registry() { return *registry_; }

}  // namespace bitnet

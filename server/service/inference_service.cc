#include "server/service/inference_service.h"

#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/service/event_log.h"
#include "server/service/grpc_status.h"
#include "server/service/live_call_reactor.h"
#include "server/service/tensor_codec.h"

namespace bitnet {
namespace {

double SecondsSince(absl::Time start) {
  return absl::ToDoubleSeconds(absl::Now() - start);
}

// The client's connection as a routing affinity key (never 0).
uint64_t RoutingKeyOf(const grpc::ServerContextBase& context) {
  return std::hash<std::string>{}(context.peer()) | 1;
}

// Called exactly once with the outcome of a request SubmitInfer accepted.
using InferDone = std::function<void(const absl::Status&)>;

// Validates `request`, and enqueues it on its model's batcher. On OK, `done`
// is called exactly once later (from a batcher thread) after `out` has been
// filled (on success) and the request metrics recorded. On an error nothing
// is enqueued, `done` is never called, and the caller answers with the
// returned status (its metrics are already recorded).
// The input bytes are not copied here: the batcher reads them straight into
// its batch. They are request.input().data(), which must then stay alive
// until `done` (a unary call's request does), or `owned_data` when not null
// (kept alive by the request until done).
absl::Status SubmitInfer(ServingState& state, const v1::InferRequest& request,
                         std::shared_ptr<const std::string> owned_data,
                         absl::Time start, absl::Time deadline,
                         std::function<bool()> is_cancelled,
                         uint64_t routing_key,
                         v1::InferResponse* out, InferDone done) {
  const std::string& name = request.model();
  // A client must not be able to create metric series by inventing names.
  const std::string metric_model =
      state.IsKnownModel(name) ? name : std::string("unknown");
  auto reject = [&](absl::Status status) {
    state.metrics().RecordRequest(
        metric_model, GrpcCodeName(ToGrpcStatus(status).error_code()), 0,
        SecondsSince(start));
    if (metric_model != "unknown") {
      state.Counters(name).requests.fetch_add(1, std::memory_order_relaxed);
    }
    return status;
  };

  if (name.empty()) {
    return reject(absl::InvalidArgumentError(
        "model: empty; expected the name of a loaded model (see ListModels)"));
  }
  if (request.version() > static_cast<uint64_t>(INT64_MAX)) {
    return reject(absl::InvalidArgumentError(absl::StrCat(
        "version: ", request.version(), "; expected 0 (latest) or a loaded "
        "version number")));
  }
  const int64_t version = static_cast<int64_t>(request.version());
  auto model = state.registry().Get(name, version);
  if (!model.ok()) return reject(state.MapLookupError(name, model.status()));

  if (!v1::DType_IsValid(request.output_dtype())) {
    return reject(absl::InvalidArgumentError(absl::StrCat(
        "output_dtype: ", static_cast<int>(request.output_dtype()),
        "; expected DTYPE_FP32, DTYPE_FP16 or DTYPE_BF16 (or unset for FP32)")));
  }
  const std::string description =
      absl::StrCat("model \"", name, "\" version ", (*model)->version());
  InputExpectation expect;
  expect.features = (*model)->input_features();
  expect.max_rows = state.config().max_request_rows;
  expect.field = "input";
  expect.model_description = description;
  const std::string& bytes =
      owned_data != nullptr ? *owned_data : request.input().data();
  absl::StatusOr<InputRows> input = ValidateInput(
      request.input(), std::string_view(bytes.data(), bytes.size()), expect);
  if (!input.ok()) return reject(input.status());

  const int64_t rows = input->rows;
  const int64_t output_features = (*model)->output_features();
  BatchRequest batch_request;
  batch_request.input_data = input->data;
  batch_request.input_dtype = input->dtype;
  // DTYPE_UNSPECIFIED = fp32.
  ElementTypeOf(request.output_dtype(), &batch_request.output_dtype);
  batch_request.rows = rows;
  batch_request.deadline = deadline;
  batch_request.is_cancelled = std::move(is_cancelled);
  batch_request.routing_key = routing_key;
  // 0 = whichever version is current when the batch is dispatched.
  batch_request.model_version = version;
  batch_request.on_done = [&state, name, rows, output_features, start, out,
                           owned_data = std::move(owned_data),
                           output_dtype = request.output_dtype(),
                           request_id = request.request_id(),
                           done = std::move(done)](RequestResult result) {
    absl::Status status = result.status;
    if (status.ok() &&
        static_cast<int64_t>(result.output.size()) != rows * output_features) {
      status = absl::InternalError(absl::StrCat(
          "batch returned ", result.output.size(), " values for ", rows,
          " rows; expected ", rows * output_features));
    }
    if (status.ok()) {
      status = EncodeOutput(result.output.data(), result.output.dtype(), rows,
                            output_features, output_dtype,
                            out->mutable_output());
    }
    if (status.ok()) {
      out->set_model(name);
      out->set_version(static_cast<uint64_t>(result.model_version));
      out->set_request_id(request_id);
      out->mutable_timing()->set_queue_seconds(result.queue_seconds);
      out->mutable_timing()->set_server_seconds(SecondsSince(start));
    } else if (status.code() == absl::StatusCode::kInternal) {
      LogEvent(LogLevel::kError, "inference_failed",
               {{"model", name}, {"error", status.ToString()}});
    }
    state.metrics().RecordRequest(
        name, GrpcCodeName(ToGrpcStatus(status).error_code()), rows,
        SecondsSince(start));
    ModelCounters& counters = state.Counters(name);
    counters.requests.fetch_add(1, std::memory_order_relaxed);
    if (status.ok()) {
      counters.rows.fetch_add(static_cast<uint64_t>(rows),
                              std::memory_order_relaxed);
    }
    done(status);
  };
  absl::Status enqueued = state.registry().Enqueue(name, std::move(batch_request));
  if (!enqueued.ok()) return reject(state.MapLookupError(name, enqueued));
  return absl::OkStatus();
}

absl::Time DeadlineOf(const grpc::CallbackServerContext* context) {
  const auto deadline = context->deadline();
  // No deadline is reported as the largest time_point.
  if (deadline == std::chrono::system_clock::time_point::max()) {
    return absl::InfiniteFuture();
  }
  return absl::FromChrono(deadline);
}

// One InferStream call. Reads requests one at a time and submits each;
// answers are queued and written one at a time in completion order. The
// reactor finishes (OK) when the client has half-closed (or cancelled) and
// every submitted request has been answered; it deletes itself in OnDone.
//
// A drain ends a stream early (EndForDrain): once its items are answered it
// finishes with UNAVAILABLE "draining", so that the client reconnects to
// another replica instead of holding the stream (and the exit) open until
// the grace period ends.
//
// Reactor methods (StartRead, StartWrite, Finish) are never called with mu_
// held: gRPC may run a reaction inline from them. Finish() is always the
// last thing a path does with `this`, since OnDone (delete) may follow at
// once on another thread.
class InferStreamReactor final
    : public grpc::ServerBidiReactor<v1::InferRequest, v1::InferStreamResponse>,
      public ServingState::DrainableStream {
 public:
  InferStreamReactor(ServingState* state, grpc::CallbackServerContext* context)
      : state_(state),
        context_(context),
        routing_key_(RoutingKeyOf(*context)),
        start_(absl::Now()) {
    state_->CallStarted();
    StartRead(&request_);
    // Last: from here on the drain may call EndForDrain (gRPC queues a
    // Finish made before the handler has returned this reactor).
    slot_ = state_->RememberStream(this);
    // A stream opened during a drain can only have its items refused.
    if (state_->draining()) EndForDrain();
  }

  void EndForDrain() override { SetAndFinishIfDone(&InferStreamReactor::ending_for_drain_); }

  void OnReadDone(bool ok) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!ok || finished_) {
        reads_done_ = true;
        if (!ShouldFinishLocked()) return;
      } else {
        // One for the item until it is answered, one for this reaction
        // until it has issued the next read (no Finish in between).
        outstanding_ += 2;
      }
    }
    if (!ok) {
      Finish(final_status_);
      return;
    }
    Submit(request_);
    bool read_more;
    {
      std::lock_guard<std::mutex> lock(mu_);
      read_more = !cancelled_ && !broken_;
      if (!read_more) reads_done_ = true;
    }
    if (read_more) StartRead(&request_);
    bool finish;
    {
      std::lock_guard<std::mutex> lock(mu_);
      --outstanding_;
      finish = ShouldFinishLocked();
    }
    if (finish) Finish(final_status_);
  }

  void OnWriteDone(bool ok) override {
    v1::InferStreamResponse* next = nullptr;
    bool finish = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      writes_.pop_front();
      if (!ok) {
        // The client is gone: nothing more can be written.
        broken_ = true;
        writes_.clear();
      }
      if (!writes_.empty()) {
        next = &writes_.front();
      } else {
        writing_ = false;
        finish = ShouldFinishLocked();
      }
    }
    if (next != nullptr) StartWrite(next);
    if (finish) Finish(final_status_);
  }

  void OnCancel() override { SetAndFinishIfDone(&InferStreamReactor::cancelled_); }

  void OnDone() override {
    state_->metrics().RecordRpc("bidi_stream", kInferenceServiceName,
                                "InferStream",
                                GrpcCodeName(final_status_.error_code()),
                                SecondsSince(start_));
    state_->ForgetStream(slot_);
    state_->CallDone();
    delete this;
  }

 private:
  void Submit(v1::InferRequest& request) {
    const absl::Time start = absl::Now();
    auto answer = std::make_shared<v1::InferStreamResponse>();
    answer->set_request_id(request.request_id());
    absl::Status status = state_->BeginWork();
    if (status.ok()) {
      grpc::CallbackServerContext* context = context_;
      ServingState* state = state_;
      // request_ is the read buffer, reused by the next read: the input
      // bytes move out of it and live with the request until it is done.
      auto owned = std::make_shared<std::string>(
          std::move(*request.mutable_input()->mutable_data()));
      status = SubmitInfer(
          *state_, request, std::move(owned), start, DeadlineOf(context_),
          [context] { return context->IsCancelled(); }, routing_key_,
          answer->mutable_response(),
          [this, state, answer](const absl::Status& s) {
            if (!s.ok()) SetError(answer.get(), s);
            Answer(std::move(*answer));  // may delete this
            state->EndWork();
          });
      if (!status.ok()) state_->EndWork();
    }
    if (!status.ok()) {
      SetError(answer.get(), status);
      // Cannot finish the stream: this reaction still holds a count.
      Answer(std::move(*answer));
    }
  }

  static void SetError(v1::InferStreamResponse* answer,
                       const absl::Status& status) {
    answer->mutable_error()->set_code(static_cast<int>(status.code()));
    answer->mutable_error()->set_message(std::string(status.message()));
  }

  // Queues one answer and retires its item. May Finish (and so delete this).
  void Answer(v1::InferStreamResponse answer) {
    v1::InferStreamResponse* start_write = nullptr;
    bool finish = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      --outstanding_;
      if (!broken_ && !cancelled_) {
        writes_.push_back(std::move(answer));
        if (!writing_) {
          writing_ = true;
          start_write = &writes_.front();
        }
      }
      if (start_write == nullptr) finish = ShouldFinishLocked();
    }
    if (start_write != nullptr) StartWrite(start_write);
    // After a cancel the status is not sent anyway.
    if (finish) Finish(final_status_);
  }

  // Sets one of the end conditions (cancelled_, ending_for_drain_) and
  // finishes the stream if nothing else is outstanding.
  void SetAndFinishIfDone(bool InferStreamReactor::*condition) {
    bool finish;
    {
      std::lock_guard<std::mutex> lock(mu_);
      this->*condition = true;
      finish = ShouldFinishLocked();
    }
    if (finish) Finish(final_status_);
  }

  // True exactly once: when no answer can still arrive or be written and
  // the client will send nothing more (or a drain ends the stream). Marks
  // the reactor finished and sets final_status_ (written once, here, then
  // only read).
  bool ShouldFinishLocked() {
    if (finished_ || writing_ || outstanding_ > 0) return false;
    if (!(reads_done_ || cancelled_ || broken_ || ending_for_drain_)) return false;
    finished_ = true;
    if (cancelled_) {
      final_status_ = grpc::Status::CANCELLED;
    } else if (ending_for_drain_ && !reads_done_ && !broken_) {
      final_status_ = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                   "server is draining (shutting down); open a new stream "
                                   "on another replica");
    }
    return true;
  }

  ServingState* const state_;
  grpc::CallbackServerContext* const context_;
  // The stream's connection, for routing affinity: one per stream, not per item.
  const uint64_t routing_key_;
  const absl::Time start_;
  v1::InferRequest request_;  // the read buffer

  std::mutex mu_;
  std::deque<v1::InferStreamResponse> writes_;  // front() is being written
  int64_t outstanding_ = 0;  // items not yet answered (+1 inside OnReadDone)
  bool writing_ = false;
  bool reads_done_ = false;
  bool cancelled_ = false;
  bool broken_ = false;
  bool ending_for_drain_ = false;
  bool finished_ = false;
  grpc::Status final_status_;  // OK unless ShouldFinishLocked says otherwise
  std::shared_ptr<ServingState::StreamSlot> slot_;
};

}  // namespace

grpc::ServerUnaryReactor* InferenceService::Infer(
    grpc::CallbackServerContext* context, const v1::InferRequest* request,
    v1::InferResponse* response) {
  const absl::Time start = absl::Now();
  grpc::ServerUnaryReactor* reactor = new LiveCallReactor(state_);
  ServingState* state = state_;
  auto finish = [reactor, state, start](const absl::Status& status) {
    const grpc::Status grpc_status = ToGrpcStatus(status);
    state->metrics().RecordRpc("unary", kInferenceServiceName, "Infer",
                               GrpcCodeName(grpc_status.error_code()),
                               SecondsSince(start));
    reactor->Finish(grpc_status);
  };
  absl::Status status = state_->BeginWork();
  if (!status.ok()) {
    finish(status);
    return reactor;
  }
  status = SubmitInfer(
      *state_, *request, /*owned_data=*/nullptr, start, DeadlineOf(context),
      [context] { return context->IsCancelled(); }, RoutingKeyOf(*context), response,
      [finish, state](const absl::Status& s) {
        finish(s);
        state->EndWork();
      });
  if (!status.ok()) {
    finish(status);
    state_->EndWork();
  }
  return reactor;
}

grpc::ServerBidiReactor<v1::InferRequest, v1::InferStreamResponse>*
InferenceService::InferStream(grpc::CallbackServerContext* context) {
  return new InferStreamReactor(state_, context);
}

grpc::ServerUnaryReactor* InferenceService::ListModels(
    grpc::CallbackServerContext* context, const v1::ListModelsRequest*,
    v1::ListModelsResponse* response) {
  const absl::Time start = absl::Now();
  for (const ModelStatus& model : state_->registry().List()) {
    v1::ModelSummary* summary = response->add_models();
    summary->set_name(model.name);
    summary->set_latest_version(static_cast<uint64_t>(model.current_version));
    for (const auto& version : model.versions) {
      summary->add_versions(static_cast<uint64_t>(version->version()));
      if (version->version() == model.current_version) {
        summary->set_backend(version->device());
        summary->set_input_features(version->input_features());
        summary->set_output_features(version->output_features());
      }
    }
  }
  grpc::ServerUnaryReactor* reactor = new LiveCallReactor(state_);
  state_->metrics().RecordRpc("unary", kInferenceServiceName, "ListModels",
                              "OK", SecondsSince(start));
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

void DescribeModelVersion(ServingState& state, const ModelVersion& version,
                          v1::GetModelResponse* out) {
  out->set_name(version.model_name());
  out->set_version(static_cast<uint64_t>(version.version()));
  for (const ModelStatus& model : state.registry().List()) {
    if (model.name != version.model_name()) continue;
    for (const auto& v : model.versions) {
      out->add_versions(static_cast<uint64_t>(v->version()));
    }
  }
  out->set_backend(version.device());
  out->add_input_shape(-1);
  out->add_input_shape(version.input_features());
  out->add_output_shape(-1);
  out->add_output_shape(version.output_features());
  for (v1::DType dtype : {v1::DTYPE_FP32, v1::DTYPE_FP16, v1::DTYPE_BF16}) {
    out->add_input_dtypes(dtype);
    out->add_output_dtypes(dtype);
  }
  const VersionDetails details =
      state.Details(version.model_name(), version.version());
  for (size_t i = 0; i < version.layers().size(); ++i) {
    const LayerSpec& spec = version.layers()[i];
    v1::LayerInfo* layer = out->add_layers();
    layer->set_index(static_cast<int32_t>(i));
    layer->set_in_features(spec.in_features);
    layer->set_out_features(spec.out_features);
    layer->set_activation(std::string(ActivationName(spec.activation)));
    layer->set_act_quant(std::string(ActivationQuantName(spec.act_quant)));
    layer->set_has_bias(spec.has_bias);
    if (i < details.granularity.size()) {
      layer->set_scale_granularity(details.granularity[i] ==
                                           ScaleGranularity::kPerRow
                                       ? "per_row"
                                       : "per_tensor");
    }
    layer->set_weight_dtype("ternary2");
    layer->add_packed_shape(spec.out_features);
    layer->add_packed_shape(WordsPerRow(spec.in_features));
  }
  out->set_packed_bytes(details.packed_bytes);
  out->set_max_request_rows(state.config().max_request_rows);
}

grpc::ServerUnaryReactor* InferenceService::GetModel(
    grpc::CallbackServerContext* context, const v1::GetModelRequest* request,
    v1::GetModelResponse* response) {
  const absl::Time start = absl::Now();
  absl::Status status;
  if (request->name().empty()) {
    status = absl::InvalidArgumentError(
        "name: empty; expected the name of a loaded model (see ListModels)");
  } else if (request->version() > static_cast<uint64_t>(INT64_MAX)) {
    status = absl::InvalidArgumentError(absl::StrCat(
        "version: ", request->version(),
        "; expected 0 (latest) or a loaded version number"));
  } else {
    auto version = state_->registry().Get(
        request->name(), static_cast<int64_t>(request->version()));
    if (version.ok()) {
      DescribeModelVersion(*state_, **version, response);
    } else {
      status = state_->MapLookupError(request->name(), version.status());
    }
  }
  const grpc::Status grpc_status = ToGrpcStatus(status);
  state_->metrics().RecordRpc("unary", kInferenceServiceName, "GetModel",
                              GrpcCodeName(grpc_status.error_code()),
                              SecondsSince(start));
  grpc::ServerUnaryReactor* reactor = new LiveCallReactor(state_);
  reactor->Finish(grpc_status);
  return reactor;
}

}  // namespace bitnet

#include "server/batching/dynamic_batcher.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_format.h"

namespace bitnet {
namespace {

class NoOpObserver final : public BatcherObserver {};

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

}  // namespace

absl::Status ValidateBatcherOptions(const BatcherOptions& o) {
  if (o.input_features <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "batcher options: input_features must be positive, got %d",
        o.input_features));
  }
  if (o.output_features <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "batcher options: output_features must be positive, got %d",
        o.output_features));
  }
  if (o.max_batch_rows <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "batcher options: max_batch_rows must be positive, got %d",
        o.max_batch_rows));
  }
  if (o.preferred_batch_rows <= 0 ||
      o.preferred_batch_rows > o.max_batch_rows) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "batcher options: preferred_batch_rows must be in [1, max_batch_rows "
        "= %d], got %d",
        o.max_batch_rows, o.preferred_batch_rows));
  }
  if (o.max_queue_rows < o.max_batch_rows) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "batcher options: max_queue_rows must be >= max_batch_rows = %d, got "
        "%d",
        o.max_batch_rows, o.max_queue_rows));
  }
  if (o.max_queue_delay < absl::ZeroDuration() ||
      o.max_queue_delay == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "batcher options: max_queue_delay must be finite and >= 0, got %s",
        absl::FormatDuration(o.max_queue_delay)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<DynamicBatcher>> DynamicBatcher::Create(
    BatcherOptions options, RunBatchFn run, Clock* clock,
    BatcherObserver* observer) {
  if (absl::Status s = ValidateBatcherOptions(options); !s.ok()) return s;
  if (!run) {
    return absl::InvalidArgumentError("batcher: run callback is required");
  }
  std::unique_ptr<DynamicBatcher> batcher(new DynamicBatcher(
      std::move(options), std::move(run),
      clock != nullptr ? clock : RealClock::Default(), observer));
  // Threads start only once the object is fully constructed.
  batcher->dispatcher_ = std::thread([b = batcher.get()] { b->DispatcherLoop(); });
  batcher->worker_ = std::thread([b = batcher.get()] { b->WorkerLoop(); });
  return batcher;
}

DynamicBatcher::DynamicBatcher(BatcherOptions options, RunBatchFn run,
                               Clock* clock, BatcherObserver* observer)
    : options_(std::move(options)),
      run_(std::move(run)),
      clock_(clock),
      observer_(observer != nullptr ? observer : new NoOpObserver()),
      owned_observer_(observer != nullptr ? nullptr : observer_) {}

DynamicBatcher::~DynamicBatcher() { Shutdown(); }

absl::Status DynamicBatcher::Enqueue(BatchRequest request) {
  if (!request.on_done) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "model '%s': request has no on_done callback", options_.name));
  }
  if (request.rows <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "model '%s': rows must be positive, got %d", options_.name,
        request.rows));
  }
  if (request.rows > options_.max_batch_rows) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "model '%s': request has %d rows, more than max_batch_rows = %d",
        options_.name, request.rows, options_.max_batch_rows));
  }
  const int64_t expected = request.rows * options_.input_features;
  if (static_cast<int64_t>(request.input.size()) != expected) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "model '%s': input has %d values, expected rows * input_features = "
        "%d * %d = %d",
        options_.name, request.input.size(), request.rows,
        options_.input_features, expected));
  }
  const absl::Time now = clock_->Now();
  if (request.deadline <= now) {
    return absl::DeadlineExceededError(absl::StrFormat(
        "model '%s': deadline already passed before enqueue", options_.name));
  }

  absl::MutexLock lock(&mu_);
  if (draining_) {
    return absl::UnavailableError(absl::StrFormat(
        "model '%s' is draining and accepts no new requests", options_.name));
  }
  if (queued_rows_ + request.rows > options_.max_queue_rows) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "model '%s': queue full: %d rows queued, limit max_queue_rows = %d, "
        "request has %d rows",
        options_.name, queued_rows_, options_.max_queue_rows, request.rows));
  }
  queued_rows_ += request.rows;
  queued_rows_by_key_[request.model_version] += request.rows;
  if (request.deadline != absl::InfiniteFuture()) {
    deadlines_.insert(request.deadline);
  }
  queue_.push_back(Pending{std::move(request), now});
  ++enqueue_seq_;
  observer_->OnQueueRows(queued_rows_);
  dispatcher_cv_.Signal();
  return absl::OkStatus();
}

void DynamicBatcher::BeginDrain() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
  dispatcher_cv_.Signal();
}

void DynamicBatcher::Shutdown() {
  BeginDrain();
  absl::MutexLock lock(&shutdown_mu_);
  if (joined_) return;
  // The dispatcher exits once draining with an empty queue; the worker once
  // the dispatcher has exited and the hand-off is empty. Every on_done runs
  // on one of them, so after both joins every accepted request is answered.
  if (dispatcher_.joinable()) dispatcher_.join();
  if (worker_.joinable()) worker_.join();
  joined_ = true;
}

int64_t DynamicBatcher::queued_rows() const {
  absl::MutexLock lock(&mu_);
  return queued_rows_;
}

int64_t DynamicBatcher::queued_requests() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(queue_.size());
}

bool DynamicBatcher::draining() const {
  absl::MutexLock lock(&mu_);
  return draining_;
}

void DynamicBatcher::AwaitDispatcherIdleForTesting() {
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return dispatcher_exited_ ||
           (dispatcher_blocked_ && examined_seq_ == enqueue_seq_ &&
            examined_at_ == clock_->Now());
  };
  absl::MutexLock lock(&mu_, absl::Condition(&idle));
}

absl::Status DynamicBatcher::CheckAlive(const Pending& p,
                                        absl::Time now) const {
  if (now >= p.request.deadline) {
    return absl::DeadlineExceededError(absl::StrFormat(
        "model '%s': deadline exceeded after %s in the queue", options_.name,
        absl::FormatDuration(now - p.enqueued)));
  }
  if (p.request.is_cancelled && p.request.is_cancelled()) {
    return absl::CancelledError(absl::StrFormat(
        "model '%s': request cancelled while queued", options_.name));
  }
  return absl::OkStatus();
}

void DynamicBatcher::Unqueue(const Pending& p) {
  queued_rows_ -= p.request.rows;
  auto key = queued_rows_by_key_.find(p.request.model_version);
  if ((key->second -= p.request.rows) == 0) queued_rows_by_key_.erase(key);
  if (p.request.deadline != absl::InfiniteFuture()) {
    deadlines_.erase(deadlines_.find(p.request.deadline));
  }
}

DynamicBatcher::Finished DynamicBatcher::Dropped(Pending& p,
                                                 absl::Status status,
                                                 absl::Time now) {
  RequestResult result;
  result.status = std::move(status);
  result.queue_seconds = Seconds(now - p.enqueued);
  observer_->OnRequestQueued(result.queue_seconds);
  return Finished{std::move(p.request.on_done), std::move(result),
                  p.request.rows};
}

void DynamicBatcher::DropDeadRequests(absl::Time now,
                                      std::vector<Finished>* dropped) {
  if (deadlines_.empty() || *deadlines_.begin() > now) return;
  std::deque<Pending> alive;
  for (Pending& p : queue_) {
    absl::Status status = CheckAlive(p, now);
    if (status.ok()) {
      alive.push_back(std::move(p));
      continue;
    }
    Unqueue(p);
    dropped->push_back(Dropped(p, std::move(status), now));
  }
  queue_ = std::move(alive);
  if (!dropped->empty()) observer_->OnQueueRows(queued_rows_);
}

bool DynamicBatcher::ShouldDispatch(absl::Time now) const {
  if (queue_.empty()) return false;
  if (draining_) return true;
  const Pending& oldest = queue_.front();
  auto it = queued_rows_by_key_.find(oldest.request.model_version);
  if (it != queued_rows_by_key_.end() &&
      it->second >= options_.preferred_batch_rows) {
    return true;
  }
  // The delay only sends a partial batch to an idle worker: while the worker
  // computes, a partial batch would sit in the hand-off anyway, and leaving
  // its requests queued lets later arrivals join them. Once the worker is
  // free, a partial batch still waits up to max_queue_delay for the clients
  // just answered to send their next rows (under load, batches then stay at
  // preferred_batch_rows instead of breaking into a partial one and a rest).
  return !worker_busy_ && now >= PartialBatchDeadline();
}

absl::Time DynamicBatcher::PartialBatchDeadline() const {
  return std::max(queue_.front().enqueued, worker_idle_since_) +
         options_.max_queue_delay;
}

absl::Time DynamicBatcher::NextWakeup() const {
  absl::Time wakeup =
      deadlines_.empty() ? absl::InfiniteFuture() : *deadlines_.begin();
  // With the hand-off full or the worker busy the delay cannot trigger a
  // dispatch; only the worker taking the batch or finishing (a signal) can.
  if (!handoff_.has_value() && !worker_busy_ && !queue_.empty()) {
    wakeup = std::min(wakeup, PartialBatchDeadline());
  }
  return wakeup;
}

std::vector<DynamicBatcher::Pending> DynamicBatcher::TakeBatchRequests(
    absl::Time now, std::vector<Finished>* dropped) {
  std::vector<Pending> taken;
  const int64_t key = queue_.front().request.model_version;
  int64_t rows = 0;
  std::deque<Pending> rest;
  bool full = false;
  for (Pending& p : queue_) {
    if (!full && p.request.model_version == key) {
      if (absl::Status status = CheckAlive(p, now); !status.ok()) {
        Unqueue(p);
        dropped->push_back(Dropped(p, std::move(status), now));
        continue;
      }
      if (rows + p.request.rows > options_.max_batch_rows) {
        // Arrival order within a key: a later, smaller request must not
        // overtake this one, or a large request could starve.
        full = true;
      } else {
        Unqueue(p);
        rows += p.request.rows;
        taken.push_back(std::move(p));
        continue;
      }
    }
    rest.push_back(std::move(p));
  }
  queue_ = std::move(rest);
  observer_->OnQueueRows(queued_rows_);
  return taken;
}

DynamicBatcher::AssembledBatch DynamicBatcher::Assemble(
    std::vector<Pending> requests, absl::Time now) {
  AssembledBatch assembled;
  Batch& batch = assembled.batch;
  batch.model_version = requests.front().request.model_version;
  for (const Pending& p : requests) batch.rows += p.request.rows;
  batch.input.reserve(batch.rows * options_.input_features);
  batch.request_rows.reserve(requests.size());
  for (Pending& p : requests) {
    batch.input.insert(batch.input.end(), p.request.input.begin(),
                       p.request.input.end());
    batch.request_rows.push_back(p.request.rows);
    observer_->OnRequestQueued(Seconds(now - p.enqueued));
    // The rows now live in the batch; free the request's copy early.
    std::vector<float>().swap(p.request.input);
  }
  assembled.requests = std::move(requests);
  assembled.dispatched = now;
  return assembled;
}

void DynamicBatcher::DispatcherLoop() {
  mu_.Lock();
  while (true) {
    const absl::Time now = clock_->Now();
    std::vector<Finished> dropped;
    DropDeadRequests(now, &dropped);
    if (!dropped.empty()) {
      mu_.Unlock();
      Finish(std::move(dropped));
      mu_.Lock();
      continue;  // time moved and requests may have arrived: look again
    }
    examined_seq_ = enqueue_seq_;
    examined_at_ = now;
    if (draining_ && queue_.empty()) break;
    if (!handoff_.has_value() && ShouldDispatch(now)) {
      std::vector<Pending> taken = TakeBatchRequests(now, &dropped);
      mu_.Unlock();
      Finish(std::move(dropped));
      std::optional<AssembledBatch> assembled;
      if (!taken.empty()) assembled = Assemble(std::move(taken), now);
      mu_.Lock();
      if (assembled.has_value()) {
        handoff_ = std::move(assembled);
        worker_cv_.Signal();
      }
      continue;
    }
    dispatcher_blocked_ = true;
    clock_->WaitUntil(&mu_, &dispatcher_cv_, NextWakeup());
    dispatcher_blocked_ = false;
  }
  dispatcher_exited_ = true;
  worker_cv_.Signal();
  mu_.Unlock();
}

void DynamicBatcher::WorkerLoop() {
  while (true) {
    std::optional<AssembledBatch> assembled;
    {
      absl::MutexLock lock(&mu_);
      while (!handoff_.has_value() && !dispatcher_exited_) {
        worker_cv_.Wait(&mu_);
      }
      if (!handoff_.has_value()) return;  // dispatcher gone, nothing left
      assembled = std::move(handoff_);
      handoff_.reset();
      worker_busy_ = true;
      dispatcher_cv_.Signal();  // the slot is free for batch i+1
    }
    RunAndScatter(std::move(*assembled));
  }
}

void DynamicBatcher::RunAndScatter(AssembledBatch assembled) {
  const Batch& batch = assembled.batch;
  const absl::Time start = clock_->Now();
  absl::StatusOr<BatchResult> result = run_(batch);
  const absl::Time end = clock_->Now();
  observer_->OnBatch(batch.rows, Seconds(end - start));
  {
    // Computing is over: a delayed partial batch may be dispatched now, even
    // while this batch's answers are being delivered.
    absl::MutexLock lock(&mu_);
    worker_busy_ = false;
    worker_idle_since_ = end;
    ++enqueue_seq_;  // a change the dispatcher must examine (tests wait on it)
    dispatcher_cv_.Signal();
  }

  const int64_t out_features = options_.output_features;
  if (result.ok() &&
      static_cast<int64_t>(result->output.size()) != batch.rows * out_features) {
    result = absl::InternalError(absl::StrFormat(
        "model '%s': run callback returned %d output values for a batch of "
        "%d rows x %d output_features",
        options_.name, result->output.size(), batch.rows, out_features));
  }

  std::vector<Finished> finished;
  finished.reserve(assembled.requests.size());
  int64_t row = 0;
  for (Pending& p : assembled.requests) {
    RequestResult r;
    r.queue_seconds = Seconds(assembled.dispatched - p.enqueued);
    if (result.ok()) {
      r.status = absl::OkStatus();
      r.model_version = result->model_version;
      const auto first = result->output.begin() + row * out_features;
      r.output.assign(first, first + p.request.rows * out_features);
    } else {
      r.status = result.status();
    }
    row += p.request.rows;
    finished.push_back(
        Finished{std::move(p.request.on_done), std::move(r), p.request.rows});
  }
  Finish(std::move(finished));
}

void DynamicBatcher::Finish(std::vector<Finished> finished) {
  for (Finished& f : finished) {
    observer_->OnRequestDone(f.result.status.code(), f.rows);
    f.on_done(std::move(f.result));
  }
}

}  // namespace bitnet

#include "server/batching/dynamic_batcher.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <utility>

#include "absl/strings/str_format.h"

namespace bitnet {
namespace {

class NoOpObserver final : public BatcherObserver {};

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

// A queued request cancelled less than this before its deadline counts as
// expired (see CheckAlive): the gap is the time the call's headers took to
// reach the server, a few ms on a loaded machine; a caller who really
// cancels this close to the deadline loses nothing by the relabel.
constexpr absl::Duration kCancelledNearDeadlineIsExpired = absl::Milliseconds(50);

}  // namespace

std::vector<float> Batch::InputFloats(int64_t input_features) const {
  std::vector<float> out(static_cast<size_t>(rows * input_features));
  ConvertElements(input.data(), input_dtype, out.data(), ElementType::kF32,
                  rows * input_features);
  return out;
}

ElementType Batch::WriteOutput(const std::vector<float>& values) const {
  ConvertElements(values.data(), ElementType::kF32, output.data(), output_dtype,
                  static_cast<int64_t>(values.size()));
  return output_dtype;
}

HostBuffer DynamicBatcher::BufferPool::Take() {
  {
    absl::MutexLock lock(&mu_);
    if (!spares_.empty()) {
      HostBuffer b = std::move(spares_.back());
      spares_.pop_back();
      return b;
    }
  }
  // Outside the lock: a pinned allocation takes milliseconds.
  return allocate_ ? allocate_(bytes_) : HostBuffer::Allocate(bytes_);
}

void DynamicBatcher::BufferPool::Give(HostBuffer buffer) {
  if (!buffer) return;
  {
    absl::MutexLock lock(&mu_);
    if (spares_.size() < max_spares_) {
      spares_.push_back(std::move(buffer));
      return;
    }
  }
  // Freed outside the lock (freeing pinned memory synchronizes the device).
}

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
  if (o.arrival_gap < absl::ZeroDuration() ||
      o.arrival_gap == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "batcher options: arrival_gap must be finite and >= 0, got %s",
        absl::FormatDuration(o.arrival_gap)));
  }
  if (o.completion_threads < 1 || o.completion_threads > 256) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "batcher options: completion_threads must be in [1, 256], got %d",
        o.completion_threads));
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
  // Buffers hold max_batch_rows fp32 rows (half rows use the first half).
  // Inputs: the open batch, the hand-off, the computing batch. Outputs: the
  // computing batch and the ones being delivered. Two of each are made now
  // so that the first batches do not allocate (pinned memory is slow to
  // allocate).
  const BatcherOptions& o = batcher->options_;
  batcher->input_pool_ = std::make_shared<BufferPool>(
      o.allocate, static_cast<size_t>(o.max_batch_rows * o.input_features) * 4, 3);
  batcher->output_pool_ = std::make_shared<BufferPool>(
      o.allocate, static_cast<size_t>(o.max_batch_rows * o.output_features) * 4, 6);
  for (BufferPool* pool : {batcher->input_pool_.get(), batcher->output_pool_.get()}) {
    HostBuffer a = pool->Take();
    HostBuffer b = pool->Take();
    pool->Give(std::move(a));
    pool->Give(std::move(b));
  }
  // Threads start only once the object is fully constructed.
  batcher->dispatcher_ = std::thread([b = batcher.get()] { b->DispatcherLoop(); });
  batcher->worker_ = std::thread([b = batcher.get()] { b->WorkerLoop(); });
  for (int i = 0; i < batcher->options_.completion_threads; ++i) {
    batcher->completers_.emplace_back(
        [b = batcher.get()] { b->CompletionLoop(); });
  }
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
  if (request.input_data == nullptr &&
      static_cast<int64_t>(request.input.size()) != expected) {
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
  ++queued_requests_;
  if (request.deadline != absl::InfiniteFuture()) {
    deadlines_.insert(request.deadline);
  }
  last_arrival_ = std::max(last_arrival_, now);
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
  // The dispatcher exits once draining with nothing waiting; the worker once
  // the dispatcher has exited and the hand-off is empty; the completion
  // threads once the worker has exited and every result is delivered. Every
  // on_done runs on one of them, so after the joins every accepted request
  // is answered.
  if (dispatcher_.joinable()) dispatcher_.join();
  if (worker_.joinable()) worker_.join();
  {
    absl::MutexLock completion_lock(&completion_mu_);
    worker_exited_ = true;
    completion_cv_.SignalAll();
  }
  for (std::thread& t : completers_) {
    if (t.joinable()) t.join();
  }
  joined_ = true;
}

int64_t DynamicBatcher::queued_rows() const {
  absl::MutexLock lock(&mu_);
  return queued_rows_;
}

std::optional<double> DynamicBatcher::BatchesUntilAnswered(int64_t rows) const {
  absl::MutexLock lock(&mu_);
  const absl::Duration batch = compute_estimate_;
  if (batch == absl::ZeroDuration()) return std::nullopt;
  double ahead = 0;
  if (worker_busy_) {
    const double done = absl::FDivDuration(clock_->Now() - worker_busy_since_, batch);
    ahead += std::clamp(1.0 - done, 0.0, 1.0);
  }
  if (handoff_.has_value()) ahead += 1;
  const int64_t waiting = queued_rows_ + std::max<int64_t>(rows, 0);
  const int64_t batches = std::max<int64_t>(
      1, (waiting + options_.max_batch_rows - 1) / options_.max_batch_rows);
  return ahead + static_cast<double>(batches);
}

int64_t DynamicBatcher::queued_requests() const {
  absl::MutexLock lock(&mu_);
  return queued_requests_;
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
  const bool cancelled = p.request.is_cancelled && p.request.is_cancelled();
  // The client's own deadline timer cancels its call a little before the
  // server's copy of that deadline passes (gRPC sends it as a relative
  // timeout, received later), so a cancellation this close to the deadline
  // is the deadline passing, and is reported (and counted) as such.
  if (now >= p.request.deadline ||
      (cancelled && now >= p.request.deadline - kCancelledNearDeadlineIsExpired)) {
    return absl::DeadlineExceededError(absl::StrFormat(
        "model '%s': deadline exceeded after %s in the queue", options_.name,
        absl::FormatDuration(now - p.enqueued)));
  }
  if (cancelled) {
    return absl::CancelledError(absl::StrFormat(
        "model '%s': request cancelled while queued", options_.name));
  }
  return absl::OkStatus();
}

void DynamicBatcher::Unqueue(const Pending& p) {
  queued_rows_ -= p.request.rows;
  --queued_requests_;
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

void DynamicBatcher::DropDeadFromOpenBatch(absl::Time now,
                                           std::vector<Finished>* dropped) {
  std::vector<Pending>& requests = open_.requests;
  bool any_dead = false;
  std::vector<absl::Status> statuses;
  statuses.reserve(requests.size());
  for (const Pending& p : requests) {
    statuses.push_back(CheckAlive(p, now));
    any_dead = any_dead || !statuses.back().ok();
  }
  if (!any_dead) return;
  // Compact: keep the live requests' rows, in order.
  Batch& batch = open_.batch;
  const int64_t width = options_.input_features *
                        static_cast<int64_t>(ElementBytes(batch.input_dtype));
  char* rows_data = static_cast<char*>(batch.input.data());
  std::vector<Pending> alive;
  std::vector<int64_t> alive_rows;
  int64_t src = 0;
  int64_t dst = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    const int64_t rows = requests[i].request.rows;
    if (statuses[i].ok()) {
      if (dst != src) {
        std::memmove(rows_data + dst * width, rows_data + src * width,
                     static_cast<size_t>(rows * width));
      }
      dst += rows;
      alive_rows.push_back(rows);
      alive.push_back(std::move(requests[i]));
    } else {
      Unqueue(requests[i]);
      dropped->push_back(Dropped(requests[i], std::move(statuses[i]), now));
    }
    src += rows;
  }
  batch.rows = dst;
  batch.request_rows = std::move(alive_rows);
  requests = std::move(alive);
  open_.full = false;  // room was freed: the next request may fit now
}

void DynamicBatcher::DropDeadRequests(absl::Time now,
                                      std::vector<Finished>* dropped) {
  const bool deadline_passed = !deadlines_.empty() && *deadlines_.begin() <= now;
  if (!deadline_passed && now < next_cancel_sweep_) return;
  // Cancelled requests are looked for every kCancelSweepInterval as well:
  // a storm of cancelled calls must not hold queue room (and their callers'
  // resources) until the device gets to them.
  next_cancel_sweep_ = now + kCancelSweepInterval;
  std::vector<absl::Status> statuses;
  statuses.reserve(queue_.size());
  bool any_dead = false;
  for (const Pending& p : queue_) {
    statuses.push_back(CheckAlive(p, now));
    any_dead = any_dead || !statuses.back().ok();
  }
  if (any_dead) {
    std::deque<Pending> alive;
    for (size_t i = 0; i < queue_.size(); ++i) {
      Pending& p = queue_[i];
      if (statuses[i].ok()) {
        alive.push_back(std::move(p));
        continue;
      }
      Unqueue(p);
      dropped->push_back(Dropped(p, std::move(statuses[i]), now));
    }
    queue_ = std::move(alive);
  }
  DropDeadFromOpenBatch(now, dropped);
  if (!dropped->empty()) observer_->OnQueueRows(queued_rows_);
}

std::vector<DynamicBatcher::Pending> DynamicBatcher::TakeJoiners(
    absl::Time now, std::vector<Finished>* dropped) {
  std::vector<Pending> joiners;
  if (open_.full || queue_.empty()) return joiners;
  const bool open_empty = open_.requests.empty();
  const int64_t key = open_empty ? queue_.front().request.model_version
                                 : open_.batch.model_version;
  int64_t rows = open_.batch.rows;
  std::deque<Pending> rest;
  for (Pending& p : queue_) {
    if (!open_.full && p.request.model_version == key) {
      if (absl::Status status = CheckAlive(p, now); !status.ok()) {
        Unqueue(p);
        dropped->push_back(Dropped(p, std::move(status), now));
        continue;
      }
      if (rows + p.request.rows > options_.max_batch_rows) {
        // Arrival order within a key: a later, smaller request must not
        // overtake this one, or a large request could starve.
        open_.full = true;
      } else {
        rows += p.request.rows;
        joiners.push_back(std::move(p));
        continue;
      }
    }
    rest.push_back(std::move(p));
  }
  queue_ = std::move(rest);
  if (!dropped->empty()) observer_->OnQueueRows(queued_rows_);
  if (open_empty && !joiners.empty()) open_.batch.model_version = key;
  return joiners;
}

void DynamicBatcher::AppendToOpenBatch(std::vector<Pending> joiners)
    ABSL_NO_THREAD_SAFETY_ANALYSIS {
  // Called without mu_: only the dispatcher thread touches open_'s rows, and
  // the bookkeeping other threads read (queued_rows_) did not change.
  Batch& batch = open_.batch;
  // A reused buffer: its pages are already mapped (and pinned, on a GPU).
  if (!batch.input && !joiners.empty()) batch.input = input_pool_->Take();
  const int64_t width = options_.input_features;
  for (Pending& p : joiners) {
    BatchRequest& r = p.request;
    const bool borrowed = r.input_data != nullptr;
    const void* src = borrowed ? r.input_data : r.input.data();
    const ElementType src_type = borrowed ? r.input_dtype : ElementType::kF32;
    const ElementType want_out =
        options_.half_rows ? r.output_dtype : ElementType::kF32;
    if (batch.rows == 0) {
      batch.input_dtype = options_.half_rows ? src_type : ElementType::kF32;
      batch.output_dtype = want_out;
    } else {
      if (src_type != batch.input_dtype &&
          batch.input_dtype != ElementType::kF32) {
        // Mixed input types: the batch becomes fp32 (rare; in place).
        WidenToF32InPlace(batch.input.data(), batch.input_dtype,
                          batch.rows * width);
        batch.input_dtype = ElementType::kF32;
      }
      if (want_out != batch.output_dtype) batch.output_dtype = ElementType::kF32;
    }
    const size_t elem = ElementBytes(batch.input_dtype);
    ConvertElements(src, src_type,
                    static_cast<char*>(batch.input.data()) +
                        static_cast<size_t>(batch.rows * width) * elem,
                    batch.input_dtype, r.rows * width);
    batch.rows += r.rows;
    batch.request_rows.push_back(r.rows);
    // The rows now live in the batch; free the request's copy early.
    std::vector<float>().swap(r.input);
    r.input_data = nullptr;
    open_.requests.push_back(std::move(p));
  }
}

absl::Time DynamicBatcher::HandOffTime() const {
  if (open_.requests.empty()) return absl::InfiniteFuture();
  if (draining_ || open_.full || open_.batch.rows >= options_.max_batch_rows) {
    return absl::InfinitePast();
  }
  // Partial batches (and full-enough ones whose rows keep arriving) wait at
  // most max_queue_delay, counted from the later of the oldest arrival and
  // the worker becoming free: while it computes, they would only wait in
  // the hand-off, so they keep gathering rows instead.
  const absl::Time delay_end =
      std::max(open_.requests.front().enqueued, worker_idle_since_) +
      options_.max_queue_delay;
  if (open_.batch.rows < options_.preferred_batch_rows) return delay_end;
  // Full enough: wait only while rows keep arriving, including the clients
  // answered by the batch that just finished; and never longer than about
  // one batch's compute time after the worker became free: by then the
  // device could have computed these rows and be ready for the next ones
  // (under a steady stream of arrivals the gap never comes, and waiting
  // would only add latency).
  absl::Time end = std::min(delay_end, std::max(last_arrival_, worker_idle_since_) +
                                           options_.arrival_gap);
  if (compute_estimate_ > absl::ZeroDuration()) {
    end = std::min(end, worker_idle_since_ + compute_estimate_);
  }
  return end;
}

bool DynamicBatcher::ReadyToHandOff(absl::Time now) const {
  return !handoff_.has_value() && !worker_busy_ &&
         !open_.requests.empty() && now >= HandOffTime();
}

absl::Time DynamicBatcher::NextWakeup() const {
  absl::Time wakeup =
      deadlines_.empty() ? absl::InfiniteFuture() : *deadlines_.begin();
  if (!queue_.empty() || !open_.requests.empty()) {
    wakeup = std::min(wakeup, next_cancel_sweep_);
  }
  // While the worker is busy (or the hand-off full) the open batch cannot
  // leave; only the worker becoming free (a signal) changes that.
  if (!handoff_.has_value() && !worker_busy_) {
    wakeup = std::min(wakeup, HandOffTime());
  }
  return wakeup;
}

void DynamicBatcher::HandOff(absl::Time now) {
  AssembledBatch assembled;
  assembled.batch = std::move(open_.batch);
  assembled.requests = std::move(open_.requests);
  assembled.dispatched = now;
  open_ = OpenBatch{};
  for (const Pending& p : assembled.requests) {
    Unqueue(p);
    observer_->OnRequestQueued(Seconds(now - p.enqueued));
  }
  observer_->OnQueueRows(queued_rows_);
  handoff_ = std::move(assembled);
  worker_cv_.Signal();
}

void DynamicBatcher::DispatcherLoop() {
  mu_.Lock();
  while (true) {
    const absl::Time now = clock_->Now();
    std::vector<Finished> dropped;
    DropDeadRequests(now, &dropped);
    std::vector<Pending> joiners = TakeJoiners(now, &dropped);
    if (!dropped.empty() || !joiners.empty()) {
      mu_.Unlock();
      Finish(std::move(dropped));
      AppendToOpenBatch(std::move(joiners));
      mu_.Lock();
      continue;  // time moved and requests may have arrived: look again
    }
    examined_seq_ = enqueue_seq_;
    examined_at_ = now;
    if (draining_ && queue_.empty() && open_.requests.empty()) break;
    if (ReadyToHandOff(now)) {
      // Last look at the batch's requests before they reach the worker.
      DropDeadFromOpenBatch(now, &dropped);
      if (!dropped.empty()) {
        observer_->OnQueueRows(queued_rows_);
        mu_.Unlock();
        Finish(std::move(dropped));
        mu_.Lock();
        continue;  // the batch may have become partial: look again
      }
      HandOff(now);
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
      worker_busy_since_ = clock_->Now();
    }
    RunAndScatter(std::move(*assembled));
  }
}

void DynamicBatcher::RunAndScatter(AssembledBatch assembled) {
  Batch& batch = assembled.batch;
  batch.output = output_pool_->Take();
  const absl::Time start = clock_->Now();
  absl::StatusOr<BatchResult> result = run_(batch);
  const absl::Time end = clock_->Now();
  observer_->OnBatch(batch.rows, Seconds(end - start));
  input_pool_->Give(std::move(batch.input));
  {
    // Computing is over: the open batch may leave now, while this batch's
    // answers are being delivered.
    absl::MutexLock lock(&mu_);
    worker_busy_ = false;
    worker_idle_since_ = end;
    // Exponentially weighted (1/4 new), so one slow batch does not decide.
    compute_estimate_ = compute_estimate_ == absl::ZeroDuration()
                            ? end - start
                            : (3 * compute_estimate_ + (end - start)) / 4;
    ++enqueue_seq_;  // a change the dispatcher must examine (tests wait on it)
    dispatcher_cv_.Signal();
  }

  const int64_t out_features = options_.output_features;
  if (result.ok() && result->output_dtype != ElementType::kF32 &&
      result->output_dtype != batch.output_dtype) {
    result = absl::InternalError(absl::StrFormat(
        "model '%s': run callback returned %s output for a batch that wants "
        "%s (or f32)",
        options_.name, ElementTypeName(result->output_dtype),
        ElementTypeName(batch.output_dtype)));
  }
  const absl::Status status = result.ok() ? absl::OkStatus() : result.status();
  const int64_t model_version = result.ok() ? result->model_version : 0;
  const ElementType out_type =
      result.ok() ? result->output_dtype : ElementType::kF32;
  // The answers are views into the output buffer, which goes back to the
  // pool once the last of them is gone.
  std::shared_ptr<const HostBuffer> output;
  if (status.ok()) {
    std::weak_ptr<BufferPool> pool = output_pool_;
    output = std::shared_ptr<const HostBuffer>(
        new HostBuffer(std::move(batch.output)), [pool](const HostBuffer* b) {
          HostBuffer buffer = std::move(*const_cast<HostBuffer*>(b));
          delete b;
          if (std::shared_ptr<BufferPool> p = pool.lock()) {
            p->Give(std::move(buffer));
          }
        });
  } else {
    output_pool_->Give(std::move(batch.output));
  }

  // Scattering each request's rows is part of delivering it: done by the
  // completion threads, in parallel, from the shared result.
  std::vector<Finished> finished;
  finished.reserve(assembled.requests.size());
  int64_t row = 0;
  for (Pending& p : assembled.requests) {
    RequestResult r;
    r.queue_seconds = Seconds(assembled.dispatched - p.enqueued);
    const int64_t first = row;
    const int64_t rows = p.request.rows;
    row += rows;
    if (status.ok()) {
      r.model_version = model_version;
      r.output = SharedRows(
          output,
          static_cast<const char*>(output->data()) +
              static_cast<size_t>(first * out_features) * ElementBytes(out_type),
          out_type, rows * out_features);
    }
    // The outcome code must be known before delivery (observer order).
    r.status = status;
    finished.push_back(
        Finished{std::move(p.request.on_done), std::move(r), rows});
  }
  Deliver(std::move(finished));
}

void DynamicBatcher::Deliver(std::vector<Finished> finished) {
  // Split into one chunk per completion thread (at least 8 requests each,
  // so that small batches are not scattered over many wake-ups).
  const size_t threads = static_cast<size_t>(options_.completion_threads);
  const size_t chunk =
      std::max<size_t>(8, (finished.size() + threads - 1) / threads);
  absl::MutexLock lock(&completion_mu_);
  for (size_t begin = 0; begin < finished.size(); begin += chunk) {
    const size_t end = std::min(finished.size(), begin + chunk);
    std::vector<Finished> part;
    part.reserve(end - begin);
    for (size_t i = begin; i < end; ++i) part.push_back(std::move(finished[i]));
    completions_.push_back(std::move(part));
    completion_cv_.Signal();
  }
}

void DynamicBatcher::CompletionLoop() {
  while (true) {
    std::vector<Finished> part;
    {
      absl::MutexLock lock(&completion_mu_);
      while (completions_.empty() && !worker_exited_) {
        completion_cv_.Wait(&completion_mu_);
      }
      if (completions_.empty()) return;  // worker gone, all delivered
      part = std::move(completions_.front());
      completions_.pop_front();
    }
    Finish(std::move(part));
  }
}

void DynamicBatcher::Finish(std::vector<Finished> finished) {
  for (Finished& f : finished) {
    observer_->OnRequestDone(f.result.status.code(), f.rows);
    f.on_done(std::move(f.result));
  }
}

}  // namespace bitnet

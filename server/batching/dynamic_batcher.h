// Dynamic batcher: gathers the rows of many requests for one model into one
// matrix, runs it through a caller-supplied run callback, and hands every
// request back its own output rows.
//
// Knows nothing of gRPC, protobuf, metrics libraries or CUDA: the service
// converts its messages to BatchRequest, the registry supplies the run
// callback (a model version's Forward), and a BatcherObserver reports what a
// metrics layer needs.
//
// Pipeline (threads per batcher: one dispatcher, one worker, and
// BatcherOptions::completion_threads that deliver results):
//   Enqueue() -> queue -> [dispatcher: drops expired / cancelled requests,
//   copies the rows of whole requests into the *open batch*] -> hand-off ->
//   [worker: run callback] -> [completion threads: scatter each request's
//   output rows, call its on_done].
// The open batch grows while the worker computes (its rows are copied as
// they arrive, so assembling batch i+1 overlaps computing batch i); it is
// handed to the worker only once the worker is free, so a batch holds every
// row that arrived during the previous one (up to max_batch_rows) instead of
// being cut at preferred_batch_rows. Delivering answers on their own threads
// lets the worker start the next batch at once.
//
// Dispatch policy. The open batch holds requests of one key (see
// BatchRequest::model_version) in arrival order. Once the worker is free it
// takes the open batch when
//   the open batch is full (max_batch_rows, or the next request of its key
//     does not fit), or
//   it holds >= preferred_batch_rows rows and no request has arrived for
//     arrival_gap since the later of the last arrival and the moment the
//     worker became free (rows still streaming in join the batch), or the
//     worker has been free for about one batch's compute time (a moving
//     average of the run callback's time: waiting longer than computing
//     gains nothing under a steady stream), or
//   the oldest request has waited >= max_queue_delay and the worker has been
//     free for >= max_queue_delay (partial batches wait for company: the
//     clients just answered get max_queue_delay to send their next rows), or
//   the batcher is draining (Shutdown/BeginDrain).
// With N closed-loop clients this makes them converge to one group whose
// rows arrive together, so batches approach min(N, max_batch_rows) rows
// rather than two alternating groups of N/2 (docs/architecture.md).
// A request is never split; the first request of the key that does not fit
// ends the batch (arrival order within a key, so nothing is starved by
// smaller late-comers). Deadlines and cancellation are checked when a
// request joins the open batch and again when the batch leaves: expired ->
// DEADLINE_EXCEEDED, cancelled -> CANCELLED, and it never reaches the run
// callback. The dispatcher also wakes at the earliest deadline of any
// waiting request (queued or in the open batch) and sweeps, so an expired
// request is answered at its deadline, not when its batch would have left;
// and it sweeps for cancelled requests every 10 ms while any are waiting, so
// cancelled calls free their queue room while the device is busy.
// Cost: O(log n) per Enqueue and wake-up; O(rows) copying per request.
//
// Memory. Batch inputs and outputs are HostBuffers from
// BatcherOptions::allocate (pinned memory for a GPU instance), reused from
// batch to batch: a request's rows are copied (or converted) once, from the
// caller's bytes straight into the open batch, and its answer is a view of
// the batch's output buffer (RequestResult::output), which goes back to the
// pool when the last view is gone. With BatcherOptions::half_rows a batch
// keeps fp16/bf16 rows when all of its requests send them and asks for
// fp16/bf16 output when all of them want it (else fp32: rows of another type
// widen the batch to fp32 in place), halving copies and transfers.
//
// Units: rows are matrix rows (one feature vector each); times are absl::Time
// from the injected Clock; observer durations are seconds (double).
#ifndef BITNET_SERVER_BATCHING_DYNAMIC_BATCHER_H_
#define BITNET_SERVER_BATCHING_DYNAMIC_BATCHER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/batching/clock.h"
#include "server/host/element_type.h"
#include "server/host/host_buffer.h"

namespace bitnet {

// What a request receives, exactly once, through BatchRequest::on_done.
struct RequestResult {
  // OK, or DEADLINE_EXCEEDED / CANCELLED (dropped before dispatch), or the
  // run callback's error, or INTERNAL if the callback returned malformed output.
  absl::Status status;
  // [rows, output_features] row-major, this request's own rows only, of
  // BatchRequest::output_dtype or fp32 (output.dtype() says which); a view
  // into the batch's output buffer that keeps it alive. Empty unless status
  // is OK.
  SharedRows output;
  // The model version that computed `output` (BatchResult::model_version);
  // 0 when the request never reached the run callback.
  int64_t model_version = 0;
  // Time spent queued (enqueue -> put into a batch or dropped), seconds.
  double queue_seconds = 0;
};

struct BatchRequest {
  // The rows, [rows, input_features] row-major, one of:
  //  - `input`: fp32 values owned by the request (moved into the batcher);
  //  - `input_data` (when not null): elements of `input_dtype`, not owned:
  //    they must stay valid until on_done is called. The dispatcher copies
  //    (or converts) them straight into the batch, so the caller need not
  //    decode them first (the service points this at the request's bytes).
  //    The caller vouches for the size: rows * input_features elements.
  std::vector<float> input;
  const void* input_data = nullptr;
  ElementType input_dtype = ElementType::kF32;
  // The element type the caller wants to read the output in. With
  // BatcherOptions::half_rows, a batch whose requests all want the same type
  // asks the run callback for it; otherwise the output is fp32.
  ElementType output_dtype = ElementType::kF32;
  int64_t rows = 0;
  // Routing affinity (the registry's, not the batcher's): requests with the
  // same nonzero key (the service uses the client connection) go to the same
  // instance while it is not a whole batch behind the soonest one. 0 = none.
  uint64_t routing_key = 0;
  // Honoured before dispatch: a request still queued at its deadline is
  // answered DEADLINE_EXCEEDED. absl::InfiniteFuture() = none.
  absl::Time deadline = absl::InfiniteFuture();
  // Optional. Polled by the dispatcher thread (with the batcher's lock held)
  // before dispatch; must be cheap, thread-safe and must not call back into
  // the batcher. Returning true answers the request CANCELLED.
  std::function<bool()> is_cancelled;
  // Batching key: only requests with equal model_version share a batch, and
  // the batch carries it to the run callback. The batcher gives it no other
  // meaning; the registry uses 0 = "the current version at dispatch" and N =
  // "exactly version N" (pinning).
  int64_t model_version = 0;
  // Required. Called exactly once for every request Enqueue() accepted, from
  // the batcher's dispatcher or worker thread, without the batcher's lock
  // held. Must not block for long (it delays the next batch); it may call
  // Enqueue() again. Not called when Enqueue() returns an error.
  std::function<void(RequestResult)> on_done;
};

// One assembled batch, as seen by the run callback.
struct Batch {
  int64_t rows = 0;           // total rows, <= max_batch_rows
  int64_t model_version = 0;  // the key shared by all its requests
  // [rows, input_features] row-major of input_dtype: the requests' rows
  // back to back in the order of request_rows. From BatcherOptions::allocate
  // (input.pinned() says whether a GPU can copy from it directly); room for
  // max_batch_rows fp32 rows.
  HostBuffer input;
  ElementType input_dtype = ElementType::kF32;
  // The run callback writes [rows, output_features] row-major into `output`
  // (also from BatcherOptions::allocate, room for max_batch_rows fp32 rows),
  // either of output_dtype (what every request of the batch wants) or fp32,
  // and says which in BatchResult::output_dtype.
  HostBuffer output;
  ElementType output_dtype = ElementType::kF32;
  std::vector<int64_t> request_rows;  // rows of each request, in order

  // The input rows as fp32 (tests, fakes).
  std::vector<float> InputFloats(int64_t input_features) const;
  // Writes fp32 values into `output`, converted to output_dtype; returns
  // output_dtype (for fakes that compute in fp32).
  ElementType WriteOutput(const std::vector<float>& values) const;
};

struct BatchResult {
  // The version that actually computed it, reported to every request.
  int64_t model_version = 0;
  // What the run callback wrote into Batch::output: Batch::output_dtype or
  // kF32 (anything else is answered INTERNAL).
  ElementType output_dtype = ElementType::kF32;
};

// Runs one batch. Called on the worker thread only, one batch at a time, so
// it needs no locking of its own against itself. An error status is given to
// every request of the batch.
using RunBatchFn = std::function<absl::StatusOr<BatchResult>(const Batch&)>;

// Metrics hook (the service wires it to Prometheus). Methods are called from
// the batcher's threads and from Enqueue() callers, possibly concurrently,
// and OnQueueRows / OnRequestQueued sometimes with the batcher's lock held:
// implementations must be thread-safe, fast, and must not call back into
// the batcher. Default implementations do nothing.
class BatcherObserver {
 public:
  virtual ~BatcherObserver() = default;
  // Rows now waiting (queued or in the open batch, not yet handed to the
  // worker); called after every change, with
  // the batcher's lock held so that values arrive in order: must not call
  // back into the batcher. Gauge.
  virtual void OnQueueRows(int64_t queued_rows) {}
  // A request left the queue (dispatched or dropped) after `seconds`.
  virtual void OnRequestQueued(double seconds) {}
  // A batch finished the run callback (successfully or not).
  virtual void OnBatch(int64_t rows, double compute_seconds) {}
  // Final outcome of an accepted request (exactly once per accepted request,
  // just before its on_done). Enqueue() rejections are not reported here:
  // the caller sees them as Enqueue()'s return value.
  virtual void OnRequestDone(absl::StatusCode code, int64_t rows) {}
};

struct BatcherOptions {
  // Feature counts of the model; every request's input must be
  // rows * input_features floats, every batch output
  // batch.rows * output_features floats.
  int64_t input_features = 0;
  int64_t output_features = 0;
  // Queue bound, in rows waiting (queued or in the open batch, not counting
  // the batch being computed).
  int64_t max_queue_rows = 4096;
  // A batch of at least this many rows leaves a free worker as soon as
  // arrivals pause for arrival_gap; smaller ones wait up to max_queue_delay.
  int64_t preferred_batch_rows = 128;
  // Hard limit on a batch; also the largest request accepted.
  int64_t max_batch_rows = 256;
  // Longest time the oldest request waits for a fuller batch.
  absl::Duration max_queue_delay = absl::Milliseconds(2);
  // How long a batch of >= preferred_batch_rows rows keeps waiting for more
  // rows while they keep arriving (measured from the last arrival, and from
  // the moment the worker became free). 0 = leave as soon as the worker is
  // free. Never longer than max_queue_delay after the worker became free.
  absl::Duration arrival_gap = absl::ZeroDuration();
  // Threads that deliver results (scatter + on_done) so the worker can start
  // the next batch at once; a batch's requests are split between them.
  int completion_threads = 1;
  // Used in error messages ("model 'x': ...").
  std::string name = "model";
  // Makes the batch input and output buffers (reused; a few per batcher).
  // Empty = HostBuffer::Allocate. A GPU instance's allocator gives pinned
  // memory, so the device copies straight from and into the batches.
  HostAllocator allocate;
  // Whether batches may carry fp16/bf16 rows and outputs (see "Memory"
  // above): for a run callback whose device takes them natively. Otherwise
  // rows are converted to fp32 as they join, and outputs are fp32.
  bool half_rows = false;
};

// Checks option ranges: INVALID_ARGUMENT naming the field otherwise.
absl::Status ValidateBatcherOptions(const BatcherOptions& options);

// Thread-safe: Enqueue(), BeginDrain(), Shutdown() and the accessors may be
// called from any thread, concurrently.
class DynamicBatcher {
 public:
  // `run` is required. `clock` and `observer` are not owned and must outlive
  // the batcher; nullptr clock = RealClock::Default(), nullptr observer = none.
  // Starts the dispatcher and worker threads.
  // Errors: INVALID_ARGUMENT (bad options or missing run callback).
  static absl::StatusOr<std::unique_ptr<DynamicBatcher>> Create(
      BatcherOptions options, RunBatchFn run, Clock* clock = nullptr,
      BatcherObserver* observer = nullptr);

  // Drains (as Shutdown()) and joins the threads.
  ~DynamicBatcher();

  DynamicBatcher(const DynamicBatcher&) = delete;
  DynamicBatcher& operator=(const DynamicBatcher&) = delete;

  // Queues a request; on OK its on_done will be called exactly once.
  // Errors (on_done is then not called and the request is dropped):
  //   INVALID_ARGUMENT: rows <= 0, input size != rows * input_features,
  //     rows > max_batch_rows (the message names max_batch_rows), or no on_done;
  //   DEADLINE_EXCEEDED: the deadline has already passed;
  //   RESOURCE_EXHAUSTED: queued rows + rows > max_queue_rows (the message
  //     says the rows queued and the limit);
  //   UNAVAILABLE: the batcher is draining or shut down.
  absl::Status Enqueue(BatchRequest request);

  // Stops accepting requests (UNAVAILABLE from now on) and dispatches what is
  // queued without waiting for max_queue_delay. Returns immediately.
  void BeginDrain();
  // BeginDrain(), then blocks until every accepted request has had its
  // on_done called, and joins the threads. Idempotent. Must not be called
  // from an on_done or the run callback.
  void Shutdown();

  const BatcherOptions& options() const { return options_; }
  int64_t queued_rows() const;
  int64_t queued_requests() const;
  bool draining() const;

  // How many batch times until a new request of `rows` rows would be
  // answered here, as far as this batcher can tell: the part left of the
  // batch computing now (by the moving average of recent batch times), a
  // handed-off batch waiting for the worker, then the batches that the
  // waiting rows plus these take (max_batch_rows each). nullopt until a
  // batch has run (no batch time yet). The registry routes by it, rounded
  // up: a device that has just started a batch (1.x) answers later than one
  // whose open batch would take the request now (1), even with the same
  // rows outstanding; devices in the same state tie.
  std::optional<double> BatchesUntilAnswered(int64_t rows) const;

  // For tests with a FakeClock: blocks until the dispatcher has examined
  // every request enqueued so far at the clock's current time and is
  // blocked (waiting for time, for a request or for the hand-off), or has
  // exited. Makes "nothing was dispatched yet" assertions deterministic.
  void AwaitDispatcherIdleForTesting();

 private:
  struct Pending {
    BatchRequest request;
    absl::Time enqueued;
  };
  // Rows of whole requests copied back to back, growing until the worker
  // takes it. Touched by the dispatcher thread only (under mu_ when other
  // threads' state is involved).
  struct OpenBatch {
    Batch batch;
    std::vector<Pending> requests;  // request inputs already moved into batch
    // The next queued request of this key did not fit: leave when possible.
    bool full = false;
  };
  struct AssembledBatch {
    Batch batch;
    std::vector<Pending> requests;
    absl::Time dispatched;
  };
  // Reusable buffers of one size, Thread-safe. Answers that hold an output
  // buffer give it back through a weak reference (freed instead if the
  // batcher is gone).
  class BufferPool {
   public:
    BufferPool(HostAllocator allocate, size_t bytes, size_t max_spares)
        : allocate_(std::move(allocate)), bytes_(bytes), max_spares_(max_spares) {}
    // A spare buffer, or a new one.
    HostBuffer Take();
    void Give(HostBuffer buffer);

   private:
    const HostAllocator allocate_;
    const size_t bytes_;
    const size_t max_spares_;
    absl::Mutex mu_;
    std::vector<HostBuffer> spares_ ABSL_GUARDED_BY(mu_);
  };
  struct Finished {
    std::function<void(RequestResult)> on_done;
    RequestResult result;
    int64_t rows;
  };

  DynamicBatcher(BatcherOptions options, RunBatchFn run, Clock* clock,
                 BatcherObserver* observer);

  void DispatcherLoop();
  void WorkerLoop();
  void CompletionLoop();
  // If some waiting request's deadline has passed, sweeps the queue and the
  // open batch and moves expired and cancelled requests into `dropped`;
  // otherwise O(1).
  void DropDeadRequests(absl::Time now, std::vector<Finished>* dropped)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes dead requests from the open batch (compacting its rows).
  void DropDeadFromOpenBatch(absl::Time now, std::vector<Finished>* dropped)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Why `p` may not be dispatched at `now` (DEADLINE_EXCEEDED / CANCELLED),
  // or OK.
  absl::Status CheckAlive(const Pending& p, absl::Time now) const;
  // Bookkeeping for a request that stops waiting (dispatched or dropped).
  void Unqueue(const Pending& p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Finished Dropped(Pending& p, absl::Status status, absl::Time now);
  // Moves the queued requests that join the open batch out of the queue
  // (dead ones go to `dropped`); sets open_.full when one does not fit.
  std::vector<Pending> TakeJoiners(absl::Time now,
                                   std::vector<Finished>* dropped)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Copies the joiners' rows into the open batch (no lock held: overlaps
  // with compute).
  void AppendToOpenBatch(std::vector<Pending> joiners);
  // Whether the worker may take the open batch now (worker free, hand-off
  // empty, open batch not empty).
  bool ReadyToHandOff(absl::Time now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // When a free worker takes the open batch if nothing else happens
  // (absl::InfiniteFuture() if only an event can make it leave).
  absl::Time HandOffTime() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // When the dispatcher must next look (absl::InfiniteFuture() if only a
  // signal can change anything).
  absl::Time NextWakeup() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void HandOff(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RunAndScatter(AssembledBatch assembled);
  void Deliver(std::vector<Finished> finished);
  void Finish(std::vector<Finished> finished);

  const BatcherOptions options_;
  const RunBatchFn run_;
  Clock* const clock_;
  BatcherObserver* const observer_;  // never null (a no-op one if none given)
  std::unique_ptr<BatcherObserver> owned_observer_;

  mutable absl::Mutex mu_;
  absl::CondVar dispatcher_cv_;  // new request, drain, worker free
  absl::CondVar worker_cv_;      // batch handed off, dispatcher exited
  std::deque<Pending> queue_ ABSL_GUARDED_BY(mu_);
  OpenBatch open_ ABSL_GUARDED_BY(mu_);
  // Rows waiting: in queue_ and in open_.
  int64_t queued_rows_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t queued_requests_ ABSL_GUARDED_BY(mu_) = 0;
  // Finite deadlines of waiting requests: the earliest one says when to
  // sweep, without scanning on every wake-up.
  std::multiset<absl::Time> deadlines_ ABSL_GUARDED_BY(mu_);
  absl::Time last_arrival_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  // Waiting requests are also swept for cancellation this often.
  static constexpr absl::Duration kCancelSweepInterval = absl::Milliseconds(10);
  absl::Time next_cancel_sweep_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::optional<AssembledBatch> handoff_ ABSL_GUARDED_BY(mu_);
  // Batch input buffers (the open batch's, the handed-off one's, the
  // computing one's) and output buffers (the computing batch's, and those
  // whose answers are still being delivered).
  std::shared_ptr<BufferPool> input_pool_;
  std::shared_ptr<BufferPool> output_pool_;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  // The worker is running a batch through the run callback.
  bool worker_busy_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time worker_busy_since_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  absl::Time worker_idle_since_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  // Recent run-callback time (moving average); zero until a batch has run.
  absl::Duration compute_estimate_ ABSL_GUARDED_BY(mu_) = absl::ZeroDuration();
  bool dispatcher_exited_ ABSL_GUARDED_BY(mu_) = false;
  // For AwaitDispatcherIdleForTesting().
  uint64_t enqueue_seq_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t examined_seq_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time examined_at_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  bool dispatcher_blocked_ ABSL_GUARDED_BY(mu_) = false;

  // Results waiting for a completion thread.
  absl::Mutex completion_mu_;
  absl::CondVar completion_cv_;
  std::deque<std::vector<Finished>> completions_ ABSL_GUARDED_BY(completion_mu_);
  bool worker_exited_ ABSL_GUARDED_BY(completion_mu_) = false;

  absl::Mutex shutdown_mu_;  // serializes Shutdown() callers
  bool joined_ ABSL_GUARDED_BY(shutdown_mu_) = false;
  std::thread dispatcher_;
  std::thread worker_;
  std::vector<std::thread> completers_;
};

}  // namespace bitnet

#endif  // BITNET_SERVER_BATCHING_DYNAMIC_BATCHER_H_

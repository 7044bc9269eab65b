// DynamicBatcher with a FakeClock: every timing decision is driven by
// FakeClock::Advance() and observed through AwaitDispatcherIdleForTesting(),
// never by sleeps.
#include "server/batching/dynamic_batcher.h"

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/batching/clock.h"
#include "server/host/element_type.h"
#include "server/host/host_buffer.h"

namespace bitnet {
namespace {

using ::testing::DoubleNear;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr int64_t kIn = 3;
constexpr int64_t kOut = 2;

// The "model" of these tests: any function of one row whose result tells the
// rows apart, so a row scattered to the wrong request shows.
void RowFunction(const float* x, float* y) {
  y[0] = x[0] + 10 * x[1] + 100 * x[2];
  y[1] = x[0] * x[2] - x[1];
}

std::vector<float> Expected(const std::vector<float>& input) {
  const int64_t rows = static_cast<int64_t>(input.size()) / kIn;
  std::vector<float> out(rows * kOut);
  for (int64_t r = 0; r < rows; ++r) {
    RowFunction(&input[r * kIn], &out[r * kOut]);
  }
  return out;
}

std::vector<float> operator+(std::vector<float> a, const std::vector<float>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Distinct rows for request `id`.
std::vector<float> MakeInput(int id, int64_t rows) {
  std::vector<float> v(rows * kIn);
  for (int64_t i = 0; i < rows * kIn; ++i) {
    v[i] = static_cast<float>(id) + 0.01f * static_cast<float>(i);
  }
  return v;
}

// What the run callback saw of one batch.
struct SeenBatch {
  int64_t rows = 0;
  int64_t model_version = 0;
  std::vector<int64_t> request_rows;
  std::vector<float> input;  // as fp32
  ElementType input_dtype = ElementType::kF32;
  ElementType output_dtype = ElementType::kF32;
  bool pinned = false;  // input and output both pinned
};

// Run callback that records every batch, can be made to block (gate) and to
// fail, and reports a fixed model version.
class FakeModel {
 public:
  RunBatchFn AsRunFn() {
    return [this](const Batch& batch) { return Run(batch); };
  }

  absl::StatusOr<BatchResult> Run(const Batch& batch) {
    int index;
    {
      absl::MutexLock lock(&mu_);
      batches_.push_back(SeenBatch{batch.rows, batch.model_version,
                                   batch.request_rows, batch.InputFloats(kIn),
                                   batch.input_dtype, batch.output_dtype,
                                   batch.input.pinned() && batch.output.pinned()});
      index = static_cast<int>(batches_.size());
      auto released = [this, index]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return !gated_ || released_ >= index;
      };
      mu_.Await(absl::Condition(&released));
      if (!fail_status_.ok()) return fail_status_;
    }
    BatchResult result;
    result.model_version = version_;
    result.output_dtype = batch.WriteOutput(Expected(batch.InputFloats(kIn)));
    if (wrong_output_type_) result.output_dtype = ElementType::kBF16;
    return result;
  }

  void Gate() {
    absl::MutexLock lock(&mu_);
    gated_ = true;
  }
  // Lets batch number `index` (1-based) and all before it finish.
  void ReleaseThrough(int index) {
    absl::MutexLock lock(&mu_);
    released_ = index;
  }
  void Ungate() {
    absl::MutexLock lock(&mu_);
    gated_ = false;
  }
  void FailWith(absl::Status s) {
    absl::MutexLock lock(&mu_);
    fail_status_ = std::move(s);
  }
  void ReturnWrongOutputType() { wrong_output_type_ = true; }
  void set_version(int64_t v) { version_ = v; }

  // Blocks until the run callback has been entered `n` times.
  void AwaitBatches(int n) {
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return static_cast<int>(batches_.size()) >= n;
    };
    absl::MutexLock lock(&mu_, absl::Condition(&enough));
  }
  std::vector<SeenBatch> batches() {
    absl::MutexLock lock(&mu_);
    return batches_;
  }

 private:
  absl::Mutex mu_;
  std::vector<SeenBatch> batches_ ABSL_GUARDED_BY(mu_);
  bool gated_ ABSL_GUARDED_BY(mu_) = false;
  int released_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status fail_status_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> wrong_output_type_{false};
  std::atomic<int64_t> version_{1};
};

// Collects each request's RequestResult by request id.
class Results {
 public:
  std::function<void(RequestResult)> Callback(int id) {
    return [this, id](RequestResult r) {
      absl::MutexLock lock(&mu_);
      EXPECT_EQ(results_.count(id), 0u) << "on_done called twice for " << id;
      results_[id] = std::move(r);
    };
  }
  void AwaitCount(size_t n) {
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return results_.size() >= n;
    };
    absl::MutexLock lock(&mu_, absl::Condition(&enough));
  }
  bool Has(int id) {
    absl::MutexLock lock(&mu_);
    return results_.count(id) > 0;
  }
  RequestResult Get(int id) {
    absl::MutexLock lock(&mu_);
    return results_.at(id);
  }
  size_t size() {
    absl::MutexLock lock(&mu_);
    return results_.size();
  }

 private:
  absl::Mutex mu_;
  std::map<int, RequestResult> results_ ABSL_GUARDED_BY(mu_);
};

class RecordingObserver : public BatcherObserver {
 public:
  void OnQueueRows(int64_t rows) override {
    absl::MutexLock lock(&mu_);
    queue_rows.push_back(rows);
  }
  void OnRequestQueued(double seconds) override {
    absl::MutexLock lock(&mu_);
    queue_seconds.push_back(seconds);
  }
  void OnBatch(int64_t rows, double seconds) override {
    absl::MutexLock lock(&mu_);
    batch_rows.push_back(rows);
    compute_seconds.push_back(seconds);
  }
  void OnRequestDone(absl::StatusCode code, int64_t rows) override {
    absl::MutexLock lock(&mu_);
    outcomes.push_back(code);
  }
  absl::Mutex mu_;
  std::vector<int64_t> queue_rows;
  std::vector<double> queue_seconds;
  std::vector<int64_t> batch_rows;
  std::vector<double> compute_seconds;
  std::vector<absl::StatusCode> outcomes;
};

BatcherOptions Options(int64_t preferred, int64_t max_rows,
                       absl::Duration delay, int64_t queue_rows = 1000) {
  BatcherOptions o;
  o.input_features = kIn;
  o.output_features = kOut;
  o.preferred_batch_rows = preferred;
  o.max_batch_rows = max_rows;
  o.max_queue_delay = delay;
  o.max_queue_rows = queue_rows;
  o.name = "test";
  return o;
}

class BatcherTest : public ::testing::Test {
 protected:
  void Start(BatcherOptions options, BatcherObserver* observer = nullptr) {
    auto b = DynamicBatcher::Create(std::move(options), model_.AsRunFn(),
                                    &clock_, observer);
    ASSERT_TRUE(b.ok()) << b.status();
    batcher_ = std::move(*b);
  }

  // Enqueues request `id` with `rows` rows; returns Enqueue()'s status.
  absl::Status Send(int id, int64_t rows, int64_t version = 0,
                    absl::Time deadline = absl::InfiniteFuture(),
                    std::function<bool()> cancelled = nullptr) {
    BatchRequest r;
    r.input = MakeInput(id, rows);
    r.rows = rows;
    r.model_version = version;
    r.deadline = deadline;
    r.is_cancelled = std::move(cancelled);
    r.on_done = results_.Callback(id);
    return batcher_->Enqueue(std::move(r));
  }

  // The request's result must be OK and its own rows through RowFunction.
  void ExpectAnswered(int id, int64_t rows, int64_t version = 1) {
    ASSERT_TRUE(results_.Has(id)) << "request " << id << " not answered";
    RequestResult r = results_.Get(id);
    ASSERT_TRUE(r.status.ok()) << "request " << id << ": " << r.status;
    EXPECT_EQ(r.output.ToFloats(), Expected(MakeInput(id, rows))) << "request " << id;
    EXPECT_EQ(r.model_version, version);
  }

  FakeClock clock_;
  FakeModel model_;
  Results results_;
  std::unique_ptr<DynamicBatcher> batcher_;
};

TEST(BatcherOptionsTest, RejectsBadValuesNamingTheField) {
  BatcherOptions o = Options(8, 4, absl::Milliseconds(1));
  absl::Status s = ValidateBatcherOptions(o);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("preferred_batch_rows"));

  o = Options(4, 8, absl::Milliseconds(1), /*queue_rows=*/4);
  s = ValidateBatcherOptions(o);
  EXPECT_THAT(s.message(), HasSubstr("max_queue_rows"));

  o = Options(4, 8, absl::Milliseconds(-1));
  EXPECT_THAT(ValidateBatcherOptions(o).message(), HasSubstr("max_queue_delay"));

  o = Options(4, 8, absl::Milliseconds(1));
  o.input_features = 0;
  EXPECT_THAT(ValidateBatcherOptions(o).message(), HasSubstr("input_features"));

  EXPECT_TRUE(ValidateBatcherOptions(Options(4, 8, absl::ZeroDuration())).ok());
  EXPECT_EQ(DynamicBatcher::Create(Options(4, 8, absl::Milliseconds(1)),
                                   nullptr)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(BatcherTest, FlushesWhenPreferredRowsAreQueued) {
  Start(Options(/*preferred=*/4, /*max=*/8, absl::Seconds(1)));
  ASSERT_TRUE(Send(1, 1).ok());
  ASSERT_TRUE(Send(2, 2).ok());
  batcher_->AwaitDispatcherIdleForTesting();
  EXPECT_TRUE(model_.batches().empty()) << "3 rows < preferred 4: must wait";
  EXPECT_EQ(batcher_->queued_rows(), 3);

  ASSERT_TRUE(Send(3, 1).ok());  // 4 rows queued: dispatch without any delay
  results_.AwaitCount(3);
  std::vector<SeenBatch> batches = model_.batches();
  ASSERT_EQ(batches.size(), 1u);
  EXPECT_EQ(batches[0].rows, 4);
  EXPECT_THAT(batches[0].request_rows, ElementsAre(1, 2, 1));
  ExpectAnswered(1, 1);
  ExpectAnswered(2, 2);
  ExpectAnswered(3, 1);
  EXPECT_EQ(results_.Get(1).queue_seconds, 0.0);  // the clock never moved
}

TEST_F(BatcherTest, FlushesWhenOldestRequestWaitedMaxQueueDelay) {
  Start(Options(/*preferred=*/100, /*max=*/200, absl::Milliseconds(10)));
  ASSERT_TRUE(Send(1, 2).ok());
  batcher_->AwaitDispatcherIdleForTesting();
  clock_.Advance(absl::Milliseconds(4));
  ASSERT_TRUE(Send(2, 3).ok());
  batcher_->AwaitDispatcherIdleForTesting();
  clock_.Advance(absl::Milliseconds(5));  // oldest waited 9 ms
  batcher_->AwaitDispatcherIdleForTesting();
  EXPECT_TRUE(model_.batches().empty()) << "dispatched before max_queue_delay";

  clock_.Advance(absl::Milliseconds(1));  // oldest waited 10 ms
  results_.AwaitCount(2);
  std::vector<SeenBatch> batches = model_.batches();
  ASSERT_EQ(batches.size(), 1u);
  EXPECT_EQ(batches[0].rows, 5);
  ExpectAnswered(1, 2);
  ExpectAnswered(2, 3);
  EXPECT_DOUBLE_EQ(results_.Get(1).queue_seconds, 0.010);
  EXPECT_DOUBLE_EQ(results_.Get(2).queue_seconds, 0.006);
}

TEST_F(BatcherTest, NeverExceedsMaxBatchRowsAndNeverSplitsRequests) {
  Start(Options(/*preferred=*/6, /*max=*/6, absl::Milliseconds(10)));
  ASSERT_TRUE(Send(1, 4).ok());
  ASSERT_TRUE(Send(2, 4).ok());  // 8 queued >= 6, but 4 + 4 > 6
  model_.AwaitBatches(1);
  batcher_->AwaitDispatcherIdleForTesting();
  std::vector<SeenBatch> batches = model_.batches();
  ASSERT_EQ(batches.size(), 1u);
  EXPECT_THAT(batches[0].request_rows, ElementsAre(4));
  EXPECT_EQ(batcher_->queued_rows(), 4);  // request 2 waits, whole

  results_.AwaitCount(1);  // the worker is idle: the delay runs from here
  batcher_->AwaitDispatcherIdleForTesting();
  clock_.Advance(absl::Milliseconds(10));
  results_.AwaitCount(2);
  batches = model_.batches();
  ASSERT_EQ(batches.size(), 2u);
  EXPECT_THAT(batches[1].request_rows, ElementsAre(4));
  ExpectAnswered(1, 4);
  ExpectAnswered(2, 4);
}

TEST_F(BatcherTest, RejectsRequestLargerThanMaxBatchRows) {
  Start(Options(4, 8, absl::Milliseconds(1)));
  absl::Status s = Send(1, 9);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("max_batch_rows = 8"));
  EXPECT_TRUE(Send(2, 8).ok());
}

TEST_F(BatcherTest, RejectsMalformedRequests) {
  Start(Options(4, 8, absl::Milliseconds(1)));
  EXPECT_THAT(Send(1, 0).message(), HasSubstr("rows must be positive"));

  BatchRequest wrong_size;
  wrong_size.rows = 2;
  wrong_size.input.resize(5);
  wrong_size.on_done = results_.Callback(2);
  absl::Status s = batcher_->Enqueue(std::move(wrong_size));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("expected rows * input_features = 2 * 3 = 6"));

  BatchRequest no_callback;
  no_callback.rows = 1;
  no_callback.input.resize(kIn);
  EXPECT_THAT(batcher_->Enqueue(std::move(no_callback)).message(),
              HasSubstr("on_done"));

  EXPECT_EQ(Send(3, 1, 0, clock_.Now()).code(),
            absl::StatusCode::kDeadlineExceeded);
  batcher_->Shutdown();
  EXPECT_EQ(results_.size(), 0u) << "rejected requests must not get on_done";
}

// While batch 1 computes, the rows arriving meanwhile are copied into the
// open batch, which keeps growing past preferred_batch_rows (up to
// max_batch_rows) and goes to the worker as soon as it is free.
TEST_F(BatcherTest, OpenBatchGrowsPastPreferredWhileWorkerComputes) {
  model_.Gate();
  Start(Options(/*preferred=*/2, /*max=*/4, absl::Seconds(1)));
  ASSERT_TRUE(Send(1, 1).ok());
  ASSERT_TRUE(Send(2, 1).ok());
  model_.AwaitBatches(1);  // worker is inside batch 1, blocked

  for (int id = 3; id <= 10; ++id) ASSERT_TRUE(Send(id, 1).ok());
  batcher_->AwaitDispatcherIdleForTesting();
  // 4 rows wait in the (full) open batch, 4 more in the queue.
  EXPECT_EQ(batcher_->queued_rows(), 8);
  EXPECT_EQ(batcher_->queued_requests(), 8);
  EXPECT_EQ(model_.batches().size(), 1u);

  model_.Ungate();
  model_.ReleaseThrough(100);
  results_.AwaitCount(10);
  std::vector<SeenBatch> batches = model_.batches();
  ASSERT_EQ(batches.size(), 3u);
  EXPECT_THAT(batches[0].request_rows, ElementsAre(1, 1));
  EXPECT_THAT(batches[1].request_rows, ElementsAre(1, 1, 1, 1));  // max rows
  EXPECT_THAT(batches[2].request_rows, ElementsAre(1, 1, 1, 1));
  for (int id = 1; id <= 10; ++id) ExpectAnswered(id, 1);
  EXPECT_EQ(batcher_->queued_rows(), 0);
}

// The estimate the registry routes by, in batch times: the rest of the batch
// computing (by the moving average of batch times), then the batches the
// waiting rows plus the new ones take; none before a batch has run.
TEST_F(BatcherTest, EstimatesBatchesUntilAnsweredFromBatchTimesAndWaitingRows) {
  model_.Gate();
  Start(Options(/*preferred=*/2, /*max=*/4, absl::Seconds(1)));
  EXPECT_FALSE(batcher_->BatchesUntilAnswered(1).has_value()) << "no batch has run";

  ASSERT_TRUE(Send(1, 4).ok());  // full: leaves at once
  model_.AwaitBatches(1);
  clock_.Advance(absl::Milliseconds(10));  // batch 1 computes for 10 ms
  model_.ReleaseThrough(1);
  results_.AwaitCount(1);
  // Idle, nothing waiting: one batch.
  EXPECT_DOUBLE_EQ(batcher_->BatchesUntilAnswered(1).value_or(-1), 1.0);

  ASSERT_TRUE(Send(2, 4).ok());
  model_.AwaitBatches(2);
  clock_.Advance(absl::Milliseconds(4));
  // 6 of batch 2's estimated 10 ms left, then one batch for 1 row.
  EXPECT_DOUBLE_EQ(batcher_->BatchesUntilAnswered(1).value_or(-1), 1.6);

  ASSERT_TRUE(Send(3, 4).ok());  // waits in the full open batch
  batcher_->AwaitDispatcherIdleForTesting();
  // 4 waiting + 1 new row need two batches of max_batch_rows = 4.
  EXPECT_DOUBLE_EQ(batcher_->BatchesUntilAnswered(1).value_or(-1), 2.6);
  EXPECT_DOUBLE_EQ(batcher_->BatchesUntilAnswered(0).value_or(-1), 1.6);

  clock_.Advance(absl::Milliseconds(20));  // batch 2 overruns its estimate
  EXPECT_DOUBLE_EQ(batcher_->BatchesUntilAnswered(1).value_or(-1), 2.0);

  model_.Ungate();
  model_.ReleaseThrough(100);
  results_.AwaitCount(3);
  for (int id = 1; id <= 3; ++id) ExpectAnswered(id, 4);
}

// A batch that has preferred_batch_rows waits while rows keep arriving
// (each arrival restarts arrival_gap) and leaves once they pause.
TEST_F(BatcherTest, FullEnoughBatchWaitsWhileRowsKeepArriving) {
  BatcherOptions o = Options(/*preferred=*/2, /*max=*/8, absl::Milliseconds(10));
  o.arrival_gap = absl::Milliseconds(1);
  Start(o);
  ASSERT_TRUE(Send(1, 1).ok());
  ASSERT_TRUE(Send(2, 1).ok());
  batcher_->AwaitDispatcherIdleForTesting();
  clock_.Advance(absl::Microseconds(500));
  ASSERT_TRUE(Send(3, 1).ok());  // arrivals continue: the batch waits
  batcher_->AwaitDispatcherIdleForTesting();
  clock_.Advance(absl::Microseconds(900));  // 0.9 ms since the last arrival
  batcher_->AwaitDispatcherIdleForTesting();
  EXPECT_TRUE(model_.batches().empty()) << "left while rows were arriving";

  clock_.Advance(absl::Microseconds(100));  // a 1 ms pause: leave
  results_.AwaitCount(3);
  ASSERT_EQ(model_.batches().size(), 1u);
  EXPECT_THAT(model_.batches()[0].request_rows, ElementsAre(1, 1, 1));
}

// Rows that never pause still leave max_queue_delay after the oldest
// arrived (the worker was free all along).
TEST_F(BatcherTest, ArrivalGapNeverHoldsABatchPastMaxQueueDelay) {
  BatcherOptions o = Options(/*preferred=*/2, /*max=*/100, absl::Milliseconds(3));
  o.arrival_gap = absl::Milliseconds(1);
  Start(o);
  int id = 0;
  for (; id < 6; ++id) {  // one row every 0.5 ms: never a 1 ms pause
    ASSERT_TRUE(Send(id, 1).ok());
    batcher_->AwaitDispatcherIdleForTesting();
    EXPECT_TRUE(model_.batches().empty()) << "left at " << id * 0.5 << " ms";
    clock_.Advance(absl::Microseconds(500));
  }
  // 3 ms after the first arrival.
  model_.AwaitBatches(1);
  EXPECT_EQ(model_.batches()[0].rows, 6);
}

// Under a steady stream the gap never comes: a full-enough batch then
// leaves once the worker has been free for about one batch's compute time.
TEST_F(BatcherTest, SteadyStreamWaitsNoLongerThanOneComputeTime) {
  model_.Gate();
  BatcherOptions o = Options(/*preferred=*/2, /*max=*/100, absl::Milliseconds(20));
  o.arrival_gap = absl::Milliseconds(5);
  Start(o);
  ASSERT_TRUE(Send(1, 2).ok());
  batcher_->AwaitDispatcherIdleForTesting();
  clock_.Advance(absl::Milliseconds(5));  // the gap: batch 1 leaves
  model_.AwaitBatches(1);
  clock_.Advance(absl::Milliseconds(2));  // batch 1 computes for 2 ms
  ASSERT_TRUE(Send(2, 2).ok());
  model_.ReleaseThrough(1);
  results_.AwaitCount(1);  // worker free at 7 ms; compute estimate 2 ms
  for (int id = 3; id <= 5; ++id) {  // a row every 0.5 ms, never a 5 ms gap
    clock_.Advance(absl::Microseconds(500));
    ASSERT_TRUE(Send(id, 1).ok());
    batcher_->AwaitDispatcherIdleForTesting();
    EXPECT_EQ(model_.batches().size(), 1u) << "left early, before row " << id;
  }
  clock_.Advance(absl::Microseconds(500));  // 9 ms = free at 7 ms + 2 ms
  model_.AwaitBatches(2);
  EXPECT_THAT(model_.batches()[1].request_rows, ElementsAre(2, 1, 1, 1));
  model_.Ungate();
  model_.ReleaseThrough(100);
  results_.AwaitCount(5);
}

// Closed-loop clients: while batch 1 (group A) computes, group B queues.
// When the worker frees, the clients A just got their answers and send
// again within arrival_gap: they join B, and the two groups become one
// batch instead of alternating as two half-size batches forever.
TEST_F(BatcherTest, ClientsAnsweredJoinTheWaitingGroup) {
  model_.Gate();
  BatcherOptions o = Options(/*preferred=*/4, /*max=*/16, absl::Milliseconds(10));
  o.arrival_gap = absl::Milliseconds(1);
  Start(o);
  for (int id = 1; id <= 4; ++id) ASSERT_TRUE(Send(id, 1).ok());  // group A
  batcher_->AwaitDispatcherIdleForTesting();
  clock_.Advance(absl::Milliseconds(1));
  model_.AwaitBatches(1);
  for (int id = 11; id <= 14; ++id) ASSERT_TRUE(Send(id, 1).ok());  // group B
  batcher_->AwaitDispatcherIdleForTesting();
  clock_.Advance(absl::Milliseconds(5));  // batch 1 computes for 5 ms

  model_.ReleaseThrough(1);
  results_.AwaitCount(4);  // A answered; B (4 rows >= preferred) waits 1 ms
  batcher_->AwaitDispatcherIdleForTesting();
  EXPECT_EQ(model_.batches().size(), 1u);
  clock_.Advance(absl::Microseconds(400));
  for (int id = 21; id <= 24; ++id) ASSERT_TRUE(Send(id, 1).ok());  // A again
  batcher_->AwaitDispatcherIdleForTesting();
  clock_.Advance(absl::Milliseconds(1));
  model_.AwaitBatches(2);
  model_.Ungate();
  model_.ReleaseThrough(100);
  results_.AwaitCount(12);
  EXPECT_EQ(model_.batches()[1].rows, 8) << "A and B merged into one batch";
}

TEST_F(BatcherTest, DelayDoesNotSplitTheQueueWhileWorkerComputes) {
  model_.Gate();
  Start(Options(/*preferred=*/4, /*max=*/8, absl::Milliseconds(10)));
  ASSERT_TRUE(Send(1, 1).ok());
  batcher_->AwaitDispatcherIdleForTesting();
  clock_.Advance(absl::Milliseconds(10));  // idle worker: the delay sends 1 row
  model_.AwaitBatches(1);

  ASSERT_TRUE(Send(2, 1).ok());
  batcher_->AwaitDispatcherIdleForTesting();
  clock_.Advance(absl::Milliseconds(50));  // far past the delay, worker busy
  ASSERT_TRUE(Send(3, 1).ok());
  batcher_->AwaitDispatcherIdleForTesting();
  EXPECT_EQ(batcher_->queued_rows(), 2)
      << "a partial batch must keep filling while the worker computes";

  model_.ReleaseThrough(1);  // worker idle again: the overdue rows wait
  results_.AwaitCount(1);    // max_queue_delay more, for company
  ASSERT_TRUE(Send(4, 1).ok());
  batcher_->AwaitDispatcherIdleForTesting();
  EXPECT_EQ(batcher_->queued_rows(), 3);
  clock_.Advance(absl::Milliseconds(10));
  model_.AwaitBatches(2);
  model_.Ungate();
  model_.ReleaseThrough(100);
  results_.AwaitCount(4);
  std::vector<SeenBatch> batches = model_.batches();
  ASSERT_EQ(batches.size(), 2u);
  EXPECT_THAT(batches[0].request_rows, ElementsAre(1));
  EXPECT_THAT(batches[1].request_rows, ElementsAre(1, 1, 1));
}

TEST_F(BatcherTest, QueueFullIsResourceExhaustedWithRowsAndLimit) {
  model_.Gate();
  Start(Options(/*preferred=*/4, /*max=*/4, absl::Seconds(1),
                /*queue_rows=*/8));
  ASSERT_TRUE(Send(1, 4).ok());
  model_.AwaitBatches(1);        // batch 1 running: its rows no longer count
  ASSERT_TRUE(Send(2, 4).ok());  // waits in the open batch: counts
  ASSERT_TRUE(Send(3, 3).ok());
  batcher_->AwaitDispatcherIdleForTesting();
  ASSERT_EQ(batcher_->queued_rows(), 7);
  absl::Status s = Send(5, 3);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("7 rows queued"));
  EXPECT_THAT(s.message(), HasSubstr("max_queue_rows = 8"));
  EXPECT_TRUE(Send(6, 1).ok()) << "exactly at the limit is accepted";

  model_.Ungate();
  model_.ReleaseThrough(100);
  results_.AwaitCount(4);  // 1; 2; then 3 and 6 (4 rows = max_batch_rows)
  ExpectAnswered(1, 4);
  ExpectAnswered(2, 4);
  ExpectAnswered(3, 3);
  ExpectAnswered(6, 1);
  EXPECT_FALSE(results_.Has(5));
}

TEST_F(BatcherTest, ExpiredRequestIsDroppedBeforeDispatch) {
  Start(Options(/*preferred=*/100, /*max=*/200, absl::Milliseconds(10)));
  const absl::Time t0 = clock_.Now();
  ASSERT_TRUE(Send(1, 2, 0, t0 + absl::Milliseconds(5)).ok());
  ASSERT_TRUE(Send(2, 3).ok());
  batcher_->AwaitDispatcherIdleForTesting();
  clock_.Advance(absl::Milliseconds(5));
  // Answered at its deadline, not only when the batch would have left.
  results_.AwaitCount(1);
  RequestResult expired = results_.Get(1);
  EXPECT_EQ(expired.status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(expired.output.empty());
  EXPECT_EQ(expired.model_version, 0);
  EXPECT_EQ(batcher_->queued_rows(), 3);

  clock_.Advance(absl::Milliseconds(5));
  results_.AwaitCount(2);
  std::vector<SeenBatch> batches = model_.batches();
  ASSERT_EQ(batches.size(), 1u);
  EXPECT_THAT(batches[0].request_rows, ElementsAre(3)) << "expired rows ran";
  ExpectAnswered(2, 3);
}

TEST_F(BatcherTest, DeadlineReachedWhenBatchLeavesIsDropped) {
  Start(Options(/*preferred=*/100, /*max=*/200, absl::Milliseconds(10)));
  ASSERT_TRUE(Send(1, 1, 0, clock_.Now() + absl::Milliseconds(10)).ok());
  ASSERT_TRUE(Send(2, 1).ok());
  batcher_->AwaitDispatcherIdleForTesting();
  clock_.Advance(absl::Milliseconds(10));
  results_.AwaitCount(2);
  EXPECT_EQ(results_.Get(1).status.code(), absl::StatusCode::kDeadlineExceeded);
  ExpectAnswered(2, 1);
  EXPECT_EQ(model_.batches().at(0).rows, 1);
}

TEST_F(BatcherTest, CancelledRequestIsDroppedBeforeDispatch) {
  Start(Options(/*preferred=*/4, /*max=*/8, absl::Milliseconds(10)));
  auto cancelled = std::make_shared<std::atomic<bool>>(false);
  ASSERT_TRUE(
      Send(1, 2, 0, absl::InfiniteFuture(), [cancelled] { return cancelled->load(); })
          .ok());
  batcher_->AwaitDispatcherIdleForTesting();
  cancelled->store(true);
  ASSERT_TRUE(Send(2, 1).ok());
  // 3 rows < 4: nothing leaves until the delay; then the cancelled one drops.
  clock_.Advance(absl::Milliseconds(10));
  results_.AwaitCount(2);
  EXPECT_EQ(results_.Get(1).status.code(), absl::StatusCode::kCancelled);
  ExpectAnswered(2, 1);
  ASSERT_EQ(model_.batches().size(), 1u);
  EXPECT_THAT(model_.batches()[0].request_rows, ElementsAre(1));
}

// gRPC cancels a call when the client's deadline fires, a few ms before
// the server's copy of it passes: such a cancellation is the deadline.
TEST_F(BatcherTest, CancellationJustBeforeTheDeadlineIsDeadlineExceeded) {
  Start(Options(/*preferred=*/8, /*max=*/8, absl::Milliseconds(10)));
  auto cancelled = std::make_shared<std::atomic<bool>>(false);
  auto is_cancelled = [cancelled] { return cancelled->load(); };
  // 1: cancelled 20 ms before its deadline; 2: 1 s before it.
  ASSERT_TRUE(Send(1, 1, 0, clock_.Now() + absl::Milliseconds(30), is_cancelled).ok());
  ASSERT_TRUE(Send(2, 1, 0, clock_.Now() + absl::Seconds(1), is_cancelled).ok());
  batcher_->AwaitDispatcherIdleForTesting();
  cancelled->store(true);
  clock_.Advance(absl::Milliseconds(10));
  results_.AwaitCount(2);
  EXPECT_EQ(results_.Get(1).status.code(), absl::StatusCode::kDeadlineExceeded)
      << results_.Get(1).status;
  EXPECT_EQ(results_.Get(2).status.code(), absl::StatusCode::kCancelled) << results_.Get(2).status;
  EXPECT_TRUE(model_.batches().empty());
}

TEST_F(BatcherTest, CancelledCandidateTakesNoRoomInTheBatch) {
  Start(Options(/*preferred=*/3, /*max=*/3, absl::Seconds(1)));
  std::atomic<bool> cancelled{false};
  ASSERT_TRUE(Send(1, 1).ok());
  ASSERT_TRUE(
      Send(2, 1, 0, absl::InfiniteFuture(), [&] { return cancelled.load(); })
          .ok());
  batcher_->AwaitDispatcherIdleForTesting();
  cancelled.store(true);
  ASSERT_TRUE(Send(3, 1).ok());  // 3 rows: leaves, without the cancelled one
  ASSERT_TRUE(Send(4, 1).ok());  // takes the room request 2 left
  results_.AwaitCount(4);
  EXPECT_EQ(results_.Get(2).status.code(), absl::StatusCode::kCancelled);
  std::vector<SeenBatch> batches = model_.batches();
  ASSERT_EQ(batches.size(), 1u);
  EXPECT_THAT(batches[0].request_rows, ElementsAre(1, 1, 1));
  ExpectAnswered(1, 1);
  ExpectAnswered(3, 1);
  ExpectAnswered(4, 1);
}

// Deadlines are honoured even while the worker is busy and the hand-off
// full (no batch can be formed, yet the expired request is answered).
TEST_F(BatcherTest, DeadlineAnsweredWhileWorkerIsBusy) {
  model_.Gate();
  Start(Options(/*preferred=*/1, /*max=*/4, absl::Seconds(1)));
  ASSERT_TRUE(Send(1, 1).ok());
  model_.AwaitBatches(1);
  ASSERT_TRUE(Send(2, 1).ok());  // into the hand-off
  batcher_->AwaitDispatcherIdleForTesting();
  ASSERT_TRUE(Send(3, 1, 0, clock_.Now() + absl::Milliseconds(5)).ok());
  batcher_->AwaitDispatcherIdleForTesting();
  clock_.Advance(absl::Milliseconds(5));
  results_.AwaitCount(1);
  EXPECT_EQ(results_.Get(3).status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(model_.batches().size(), 1u) << "worker still inside batch 1";
  model_.Ungate();
  model_.ReleaseThrough(100);
  results_.AwaitCount(3);
  ExpectAnswered(1, 1);
  ExpectAnswered(2, 1);
}

TEST_F(BatcherTest, ShutdownDrainsQueuedRequestsAndRejectsNewOnes) {
  model_.Gate();
  Start(Options(/*preferred=*/4, /*max=*/4, absl::Hours(1)));
  for (int id = 1; id <= 5; ++id) ASSERT_TRUE(Send(id, 1).ok());
  model_.AwaitBatches(1);  // ids 1-4; id 5 would wait an hour
  batcher_->AwaitDispatcherIdleForTesting();
  EXPECT_EQ(batcher_->queued_rows(), 1);
  batcher_->BeginDrain();
  absl::Status s = Send(6, 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(s.message(), HasSubstr("draining"));
  EXPECT_TRUE(batcher_->draining());

  // Queued work completes without the (hour-long) delay passing.
  model_.Ungate();
  model_.ReleaseThrough(100);
  batcher_->Shutdown();
  ASSERT_EQ(results_.size(), 5u);
  for (int id = 1; id <= 5; ++id) ExpectAnswered(id, 1);
  ASSERT_EQ(model_.batches().size(), 2u);
  EXPECT_THAT(model_.batches()[1].request_rows, ElementsAre(1));
  EXPECT_EQ(Send(7, 1).code(), absl::StatusCode::kUnavailable);
  batcher_->Shutdown();  // idempotent
}

TEST_F(BatcherTest, RunErrorGoesToEveryRequestOfTheBatch) {
  Start(Options(/*preferred=*/3, /*max=*/8, absl::Milliseconds(1)));
  model_.FailWith(absl::InternalError("device on fire"));
  ASSERT_TRUE(Send(1, 1).ok());
  ASSERT_TRUE(Send(2, 2).ok());
  results_.AwaitCount(2);
  for (int id : {1, 2}) {
    RequestResult r = results_.Get(id);
    EXPECT_EQ(r.status.code(), absl::StatusCode::kInternal);
    EXPECT_THAT(r.status.message(), HasSubstr("device on fire"));
    EXPECT_TRUE(r.output.empty());
  }
  // The batcher keeps serving after a failed batch.
  model_.FailWith(absl::OkStatus());
  ASSERT_TRUE(Send(3, 3).ok());
  results_.AwaitCount(3);
  ExpectAnswered(3, 3);
}

TEST_F(BatcherTest, MalformedRunOutputIsInternal) {
  model_.ReturnWrongOutputType();
  Start(Options(/*preferred=*/1, /*max=*/8, absl::Milliseconds(1)));
  ASSERT_TRUE(Send(1, 2).ok());
  results_.AwaitCount(1);
  RequestResult r = results_.Get(1);
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(r.status.message(), HasSubstr("returned bf16 output for a batch that wants f32"));
  EXPECT_TRUE(r.output.empty());
}

TEST_F(BatcherTest, RequestsWithDifferentVersionsNeverShareABatch) {
  model_.set_version(7);
  Start(Options(/*preferred=*/4, /*max=*/8, absl::Milliseconds(10)));
  ASSERT_TRUE(Send(1, 1, /*version=*/0).ok());
  ASSERT_TRUE(Send(2, 1, /*version=*/7).ok());
  ASSERT_TRUE(Send(3, 1, /*version=*/0).ok());
  ASSERT_TRUE(Send(4, 2, /*version=*/7).ok());
  batcher_->AwaitDispatcherIdleForTesting();
  EXPECT_TRUE(model_.batches().empty()) << "no key has 4 rows";
  ASSERT_TRUE(Send(5, 2, /*version=*/0).ok());  // key 0 now has 4 rows
  results_.AwaitCount(3);  // batch 1 done: the worker is idle from now on
  batcher_->AwaitDispatcherIdleForTesting();
  clock_.Advance(absl::Milliseconds(10));
  results_.AwaitCount(5);
  std::vector<SeenBatch> batches = model_.batches();
  ASSERT_EQ(batches.size(), 2u);
  EXPECT_EQ(batches[0].model_version, 0);
  EXPECT_THAT(batches[0].request_rows, ElementsAre(1, 1, 2));
  EXPECT_EQ(batches[1].model_version, 7);
  EXPECT_THAT(batches[1].request_rows, ElementsAre(1, 2));
  ExpectAnswered(1, 1, 7);
  ExpectAnswered(4, 2, 7);
  ExpectAnswered(5, 2, 7);
}

TEST_F(BatcherTest, ObserverSeesQueueBatchesAndOutcomes) {
  RecordingObserver observer;
  Start(Options(/*preferred=*/3, /*max=*/8, absl::Milliseconds(10)), &observer);
  ASSERT_TRUE(Send(1, 1, 0, clock_.Now() + absl::Milliseconds(1)).ok());
  ASSERT_TRUE(Send(2, 1).ok());
  batcher_->AwaitDispatcherIdleForTesting();
  clock_.Advance(absl::Milliseconds(2));  // request 1 expires
  results_.AwaitCount(1);
  ASSERT_TRUE(Send(3, 2).ok());  // 3 rows: dispatch
  results_.AwaitCount(3);
  batcher_->Shutdown();

  absl::MutexLock lock(&observer.mu_);
  // +1, +1, -1 (expired), +2, -3 (batch)
  EXPECT_THAT(observer.queue_rows, ElementsAre(1, 2, 1, 3, 0));
  EXPECT_THAT(observer.batch_rows, ElementsAre(3));
  EXPECT_THAT(observer.queue_seconds,
              ElementsAre(DoubleNear(0.002, 1e-12), DoubleNear(0.002, 1e-12),
                          DoubleNear(0.0, 1e-12)));
  EXPECT_THAT(observer.compute_seconds, ElementsAre(0.0));
  EXPECT_THAT(observer.outcomes,
              ElementsAre(absl::StatusCode::kDeadlineExceeded,
                          absl::StatusCode::kOk, absl::StatusCode::kOk));
}

// Request `id`'s rows as fp16 bits (MakeInput rounded to fp16).
std::vector<uint16_t> MakeHalfInput(int id, int64_t rows) {
  const std::vector<float> f = MakeInput(id, rows);
  std::vector<uint16_t> h(f.size());
  ConvertElements(f.data(), ElementType::kF32, h.data(), ElementType::kF16,
                  static_cast<int64_t>(f.size()));
  return h;
}

std::vector<float> HalfToFloats(const std::vector<uint16_t>& h) {
  std::vector<float> f(h.size());
  ConvertElements(h.data(), ElementType::kF16, f.data(), ElementType::kF32,
                  static_cast<int64_t>(h.size()));
  return f;
}

// Sends fp16 rows by reference (input_data), as the service does.
class HalfRowsTest : public BatcherTest {
 protected:
  absl::Status SendHalf(int id, int64_t rows, ElementType output_dtype,
                        absl::Time deadline = absl::InfiniteFuture()) {
    halves_[id] = MakeHalfInput(id, rows);  // alive until the test ends
    BatchRequest r;
    r.input_data = halves_[id].data();
    r.input_dtype = ElementType::kF16;
    r.output_dtype = output_dtype;
    r.rows = rows;
    r.deadline = deadline;
    r.on_done = results_.Callback(id);
    return batcher_->Enqueue(std::move(r));
  }
  // The answer computed from the fp16 rows, in fp32.
  std::vector<float> ExpectedHalf(int id, int64_t rows) {
    return Expected(HalfToFloats(MakeHalfInput(id, rows)));
  }
  // The same, rounded to fp16 (what an fp16 batch answers).
  std::vector<float> ExpectedHalfRounded(int id, int64_t rows) {
    std::vector<float> want = ExpectedHalf(id, rows);
    std::vector<uint16_t> bits(want.size());
    ConvertElements(want.data(), ElementType::kF32, bits.data(),
                    ElementType::kF16, static_cast<int64_t>(want.size()));
    return HalfToFloats(bits);
  }
  std::map<int, std::vector<uint16_t>> halves_;
};

TEST_F(HalfRowsTest, HalfBatchesKeepHalfRowsAndOutputs) {
  BatcherOptions o = Options(/*preferred=*/3, /*max=*/8, absl::Milliseconds(1));
  o.half_rows = true;
  Start(o);
  ASSERT_TRUE(SendHalf(1, 1, ElementType::kF16).ok());
  ASSERT_TRUE(SendHalf(2, 2, ElementType::kF16).ok());
  results_.AwaitCount(2);
  std::vector<SeenBatch> batches = model_.batches();
  ASSERT_EQ(batches.size(), 1u);
  EXPECT_EQ(batches[0].input_dtype, ElementType::kF16);
  EXPECT_EQ(batches[0].output_dtype, ElementType::kF16);
  EXPECT_EQ(batches[0].input, HalfToFloats(MakeHalfInput(1, 1)) + HalfToFloats(MakeHalfInput(2, 2)));
  for (int id : {1, 2}) {
    RequestResult r = results_.Get(id);
    ASSERT_TRUE(r.status.ok()) << r.status;
    EXPECT_EQ(r.output.dtype(), ElementType::kF16);
    // fp16 output = the fp32 answer rounded to fp16.
    EXPECT_EQ(r.output.ToFloats(), ExpectedHalfRounded(id, id)) << id;
  }
}

TEST_F(HalfRowsTest, MixedInputTypesWidenTheBatchToF32) {
  BatcherOptions o = Options(/*preferred=*/4, /*max=*/8, absl::Milliseconds(1));
  o.half_rows = true;
  Start(o);
  ASSERT_TRUE(SendHalf(1, 2, ElementType::kF16).ok());
  batcher_->AwaitDispatcherIdleForTesting();  // in the open batch, as fp16
  ASSERT_TRUE(Send(2, 1).ok());                // fp32 rows, fp32 output
  ASSERT_TRUE(SendHalf(3, 1, ElementType::kF16).ok());
  results_.AwaitCount(3);
  std::vector<SeenBatch> batches = model_.batches();
  ASSERT_EQ(batches.size(), 1u);
  EXPECT_EQ(batches[0].input_dtype, ElementType::kF32);
  EXPECT_EQ(batches[0].output_dtype, ElementType::kF32) << "request 2 wants f32";
  EXPECT_EQ(batches[0].input, HalfToFloats(MakeHalfInput(1, 2)) + MakeInput(2, 1) +
                                  HalfToFloats(MakeHalfInput(3, 1)));
  EXPECT_EQ(results_.Get(1).output.ToFloats(), ExpectedHalf(1, 2));
  EXPECT_EQ(results_.Get(1).output.dtype(), ElementType::kF32);
  ExpectAnswered(2, 1);
  EXPECT_EQ(results_.Get(3).output.ToFloats(), ExpectedHalf(3, 1));
}

TEST_F(HalfRowsTest, WithoutHalfRowsBatchesAreF32) {
  Start(Options(/*preferred=*/2, /*max=*/8, absl::Milliseconds(1)));
  ASSERT_TRUE(SendHalf(1, 2, ElementType::kF16).ok());
  results_.AwaitCount(1);
  ASSERT_EQ(model_.batches().size(), 1u);
  EXPECT_EQ(model_.batches()[0].input_dtype, ElementType::kF32);
  EXPECT_EQ(model_.batches()[0].output_dtype, ElementType::kF32);
  RequestResult r = results_.Get(1);
  EXPECT_EQ(r.output.dtype(), ElementType::kF32);
  EXPECT_EQ(r.output.ToFloats(), ExpectedHalf(1, 2));
}

TEST_F(HalfRowsTest, DroppedRequestsCompactHalfRows) {
  BatcherOptions o = Options(/*preferred=*/8, /*max=*/8, absl::Milliseconds(5));
  o.half_rows = true;
  Start(o);
  ASSERT_TRUE(SendHalf(1, 1, ElementType::kF16).ok());
  ASSERT_TRUE(
      SendHalf(2, 1, ElementType::kF16, clock_.Now() + absl::Milliseconds(1)).ok());
  ASSERT_TRUE(SendHalf(3, 2, ElementType::kF16).ok());
  batcher_->AwaitDispatcherIdleForTesting();
  clock_.Advance(absl::Milliseconds(2));  // request 2 expires
  results_.AwaitCount(1);
  clock_.Advance(absl::Milliseconds(5));
  results_.AwaitCount(3);
  EXPECT_EQ(results_.Get(2).status.code(), absl::StatusCode::kDeadlineExceeded);
  std::vector<SeenBatch> batches = model_.batches();
  ASSERT_EQ(batches.size(), 1u);
  EXPECT_EQ(batches[0].input_dtype, ElementType::kF16);
  EXPECT_EQ(batches[0].input, HalfToFloats(MakeHalfInput(1, 1)) + HalfToFloats(MakeHalfInput(3, 2)));
  EXPECT_EQ(results_.Get(3).output.dtype(), ElementType::kF16);
  EXPECT_EQ(results_.Get(3).output.ToFloats(), ExpectedHalfRounded(3, 2));
}

// The allocation hook makes every batch buffer, and they are reused: many
// batches need only a handful of buffers once answers are let go.
TEST(BatcherBuffersTest, AllocatorHookBuffersAreUsedAndReused) {
  std::atomic<int> allocated{0};
  std::atomic<int> freed{0};
  BatcherOptions o = Options(/*preferred=*/1, /*max=*/4, absl::Microseconds(100));
  o.allocate = [&](size_t bytes) {
    ++allocated;
    void* p = ::operator new(bytes);
    return HostBuffer(p, bytes, /*pinned=*/true, [&freed](void* q) {
      ++freed;
      ::operator delete(q);
    });
  };
  FakeModel model;
  {
    auto batcher = DynamicBatcher::Create(o, model.AsRunFn());
    ASSERT_TRUE(batcher.ok()) << batcher.status();
    for (int id = 0; id < 50; ++id) {
      absl::Notification done;
      std::vector<float> output;
      BatchRequest r;
      r.input = MakeInput(id, 2);
      r.rows = 2;
      r.on_done = [&](RequestResult result) {
        EXPECT_TRUE(result.status.ok()) << result.status;
        output = result.output.ToFloats();
        done.Notify();  // `result` (the view) is gone when on_done returns
      };
      ASSERT_TRUE((*batcher)->Enqueue(std::move(r)).ok());
      done.WaitForNotification();
      ASSERT_EQ(output, Expected(MakeInput(id, 2))) << id;
    }
    (*batcher)->Shutdown();
    for (const SeenBatch& b : model.batches()) EXPECT_TRUE(b.pinned);
    EXPECT_LE(allocated.load(), 8) << "buffers are not reused";
  }
  EXPECT_EQ(freed.load(), allocated.load()) << "every buffer freed once";
}

// Real clock, many threads: every request gets exactly its own rows back.
TEST(BatcherConcurrencyTest, ManyThreadsGetTheirOwnRows) {
  FakeModel model;
  auto batcher = DynamicBatcher::Create(
      Options(/*preferred=*/16, /*max=*/32, absl::Microseconds(200),
              /*queue_rows=*/100000),
      model.AsRunFn());
  ASSERT_TRUE(batcher.ok()) << batcher.status();
  constexpr int kThreads = 8;
  constexpr int kPerThread = 200;
  Results results;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const int id = t * kPerThread + i;
        BatchRequest r;
        r.rows = 1 + id % 5;
        r.input = MakeInput(id, r.rows);
        r.on_done = results.Callback(id);
        ASSERT_TRUE((*batcher)->Enqueue(std::move(r)).ok());
      }
    });
  }
  for (std::thread& t : threads) t.join();
  (*batcher)->Shutdown();
  ASSERT_EQ(results.size(), static_cast<size_t>(kThreads * kPerThread));
  for (int id = 0; id < kThreads * kPerThread; ++id) {
    RequestResult r = results.Get(id);
    ASSERT_TRUE(r.status.ok()) << r.status;
    ASSERT_EQ(r.output.ToFloats(), Expected(MakeInput(id, 1 + id % 5))) << id;
  }
  for (const SeenBatch& b : model.batches()) EXPECT_LE(b.rows, 32);
}

}  // namespace
}  // namespace bitnet

// The time source of the dynamic batcher, injectable so that the batcher is
// unit-tested with a fake clock instead of sleeps and timing thresholds.
//
// RealClock reads absl::Now() and waits on the condition variable with a real
// deadline. FakeClock only moves when a test calls Advance(); waiters whose
// deadline has been reached are woken by Advance().
#ifndef BITNET_SERVER_BATCHING_CLOCK_H_
#define BITNET_SERVER_BATCHING_CLOCK_H_

#include <cstdint>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace bitnet {

// Thread-safe: every method may be called from any thread.
class Clock {
 public:
  virtual ~Clock() = default;

  virtual absl::Time Now() = 0;

  // Called with `mu` held; releases it while blocked and holds it again on
  // return. Returns when `cv` is signalled, when Now() >= `deadline`, or
  // spuriously: callers re-check their condition in a loop.
  // `deadline` may be absl::InfiniteFuture() (wait for a signal only).
  virtual void WaitUntil(absl::Mutex* mu, absl::CondVar* cv,
                         absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) = 0;
};

// Wall-clock time. Stateless; Default() is a process-wide instance.
class RealClock final : public Clock {
 public:
  static RealClock* Default();

  absl::Time Now() override;
  void WaitUntil(absl::Mutex* mu, absl::CondVar* cv, absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) override;
};

// Manual time for tests. Starts at `start` and changes only in Advance() /
// SetTime(). Thread-safe, with one lifetime rule: Advance() must not run
// concurrently with the destruction of an object whose thread is blocked in
// WaitUntil() (tests advance and destroy from the same thread).
class FakeClock final : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::UnixEpoch() + absl::Hours(1));

  absl::Time Now() override;
  void WaitUntil(absl::Mutex* mu, absl::CondVar* cv, absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) override;

  // Moves time forward by `d` (>= 0) and wakes every current waiter, which
  // then re-checks its condition against the new time.
  void Advance(absl::Duration d);
  // Sets the time (never backwards: earlier times are ignored).
  void SetTime(absl::Time t);

  // Number of threads currently blocked in WaitUntil().
  int waiters();

 private:
  struct Waiter {
    absl::Mutex* mu;
    absl::CondVar* cv;
    uint64_t id;
  };
  void WakeAll(std::vector<Waiter> waiters);

  absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<Waiter> waiters_ ABSL_GUARDED_BY(mu_);
};

}  // namespace bitnet

#endif  // BITNET_SERVER_BATCHING_CLOCK_H_

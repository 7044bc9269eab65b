#include "server/batching/clock.h"

#include <algorithm>
#include <utility>

namespace bitnet {

RealClock* RealClock::Default() {
  static RealClock* const clock = new RealClock();
  return clock;
}

absl::Time RealClock::Now() { return absl::Now(); }

void RealClock::WaitUntil(absl::Mutex* mu, absl::CondVar* cv,
                          absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) {
    cv->Wait(mu);
  } else {
    cv->WaitWithDeadline(mu, deadline);
  }
}

FakeClock::FakeClock(absl::Time start) : now_(start) {}

absl::Time FakeClock::Now() {
  absl::MutexLock lock(&mu_);
  return now_;
}

void FakeClock::WaitUntil(absl::Mutex* mu, absl::CondVar* cv,
                          absl::Time deadline) {
  uint64_t id;
  {
    absl::MutexLock lock(&mu_);
    if (now_ >= deadline) return;
    id = next_id_++;
    waiters_.push_back({mu, cv, id});
  }
  // No lost wake-up: Advance() changes now_ first and then signals `cv` while
  // holding `mu`, which it can only get once this thread is inside Wait().
  cv->Wait(mu);
  absl::MutexLock lock(&mu_);
  std::erase_if(waiters_, [id](const Waiter& w) { return w.id == id; });
}

void FakeClock::Advance(absl::Duration d) {
  std::vector<Waiter> woken;
  {
    absl::MutexLock lock(&mu_);
    if (d > absl::ZeroDuration()) now_ += d;
    // Woken waiters leave the list now, so waiters() drops until they have
    // re-checked their condition and wait again.
    woken = std::exchange(waiters_, {});
  }
  WakeAll(std::move(woken));
}

void FakeClock::SetTime(absl::Time t) {
  std::vector<Waiter> woken;
  {
    absl::MutexLock lock(&mu_);
    now_ = std::max(now_, t);
    woken = std::exchange(waiters_, {});
  }
  WakeAll(std::move(woken));
}

int FakeClock::waiters() {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(waiters_.size());
}

void FakeClock::WakeAll(std::vector<Waiter> waiters) {
  // Lock order is always (caller's mu) -> mu_; here mu_ is not held.
  for (const Waiter& w : waiters) {
    absl::MutexLock lock(w.mu);
    w.cv->SignalAll();
  }
}

}  // namespace bitnet

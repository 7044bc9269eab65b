// Proves the TSan build can see both ways (scripts/sanitizers.sh tsan runs
// it before the tests): without arguments, threads synchronized only
// through absl::Mutex, absl::CondVar, absl::Condition and
// absl::Notification must produce no report (tsan_absl_annotations.cc at
// work); with the argument "race", one unguarded write must be reported
// (TSan at work at all).
#include <cstdio>
#include <cstring>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

int main(int argc, char** argv) {
  const bool race = argc > 1 && std::strcmp(argv[1], "race") == 0;
  absl::Mutex mu;
  absl::CondVar cv;
  bool ready = false;
  int guarded = 0;
  int published = 0;
  absl::Notification notification;

  std::thread cv_waiter([&] {
    absl::MutexLock lock(&mu);
    while (!ready) cv.WaitWithDeadline(&mu, absl::Now() + absl::Seconds(10));
    ++guarded;
  });
  std::thread condition_waiter([&] {
    absl::MutexLock lock(&mu, absl::Condition(&ready));
    ++guarded;
  });
  std::thread reader([&] {
    notification.WaitForNotification();
    ++published;  // ordered after the write below by the notification
  });
  // Neither side synchronizes: a race in happens-before terms whatever the
  // timing, so TSan reports it deterministically.
  int racy = 0;
  std::thread unguarded([&] {
    if (race) ++racy;
  });
  if (race) racy = 1;
  published = 1;
  notification.Notify();
  {
    absl::MutexLock lock(&mu);
    ready = true;
    cv.SignalAll();
  }
  cv_waiter.join();
  condition_waiter.join();
  reader.join();
  unguarded.join();
  std::printf("tsan canary: guarded=%d published=%d racy=%d\n", guarded, published, racy);
  return guarded == 2 ? 0 : 1;
}

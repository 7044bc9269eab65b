// ThreadSanitizer annotations for Debian's (uninstrumented) Abseil
// synchronization library. Linked into every executable of the TSan build
// by scripts/sanitizers.sh; never part of a normal build.
//
// Why: libabsl_synchronization.so from Debian is compiled without
// -fsanitize=thread, so TSan cannot see absl::Mutex, absl::CondVar or
// absl::Notification create happens-before edges, and reports every access
// guarded by an absl::Mutex as a data race (checked: two threads
// incrementing a counter under absl::MutexLock are reported). Building
// Abseil from source with TSan would take minutes of CI time; instead this
// file interposes the library's out-of-line entry points: the executable's
// definitions win over the shared library's (ELF symbol interposition), and
// each wrapper calls the real function (dlsym(RTLD_NEXT, mangled name))
// between the __tsan_mutex_pre_* / __tsan_mutex_post_* annotations, exactly
// where an instrumented Abseil would place them (mutex.cc's
// ABSL_TSAN_MUTEX_* macros). TSan then models every absl::Mutex like a
// pthread mutex: acquire on lock, release on unlock, lock-order (deadlock)
// checks, double-lock and bad-unlock reports.
//
// Accesses made *inside* the real calls are ignored (the pre_* annotations
// begin an ignore region): that is where Abseil evaluates absl::Condition
// predicates, possibly on a thread other than the waiter's, always with the
// mutex held.
//
// Limits: Mutex::Await and the CondVar waits are annotated as writer-mode
// waits (the project holds the mutex exclusively in every such call);
// Notification::HasBeenNotified is inline and reads an atomic the library
// writes, so a reader relying on it alone (instead of WaitForNotification)
// would see a false report.
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/base/options.h"
#include "absl/synchronization/barrier.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

#if !ABSL_OPTION_USE_INLINE_NAMESPACE
#error "the mangled names below assume Abseil's inline namespace"
#endif

namespace {

#define BITNET_STR2(x) #x
#define BITNET_STR(x) BITNET_STR2(x)

// The real function for `mangled`, written with the token "@" where the
// inline namespace goes ("_ZN4absl@5Mutex4LockEv" for absl::Mutex::Lock).
void* Real(const char* mangled) {
  static const std::string ns = [] {
    const char* name = BITNET_STR(ABSL_OPTION_INLINE_NAMESPACE_NAME);
    return std::to_string(std::strlen(name)) + name;
  }();
  std::string symbol = mangled;
  symbol.replace(symbol.find('@'), 1, ns);
  void* fn = dlsym(RTLD_NEXT, symbol.c_str());
  if (fn == nullptr) {
    std::fprintf(stderr, "tsan_absl_annotations: %s not found in Abseil\n", symbol.c_str());
    std::abort();
  }
  return fn;
}

// Abseil's own entry points call each other (e.g. Notification::Notify locks
// its mutex): annotate only the outermost call of a thread.
thread_local int depth = 0;
struct Outermost {
  Outermost() : outer(depth++ == 0) {}
  ~Outermost() { --depth; }
  const bool outer;
};

constexpr unsigned kRead = __tsan_mutex_read_lock;
constexpr unsigned kTry = __tsan_mutex_try_lock;
constexpr unsigned kTryFailed = __tsan_mutex_try_lock_failed;

// Real call `call()` that acquires `mu` in `mode` (0 or kRead).
template <typename Call>
auto Locking(void* mu, unsigned mode, Call call) {
  Outermost scope;
  if (scope.outer) __tsan_mutex_pre_lock(mu, mode);
  auto result = call();
  if (scope.outer) __tsan_mutex_post_lock(mu, mode, 0);
  return result;
}

// Real call that releases `mu` (held in writer mode), waits, and
// re-acquires it before returning.
template <typename Call>
auto Waiting(void* mu, Call call) {
  Outermost scope;
  if (scope.outer) {
    __tsan_mutex_pre_unlock(mu, 0);
    __tsan_mutex_post_unlock(mu, 0);
    __tsan_mutex_pre_lock(mu, 0);
  }
  auto result = call();
  if (scope.outer) __tsan_mutex_post_lock(mu, 0, 0);
  return result;
}

// void-returning calls go through these lambdas returning a dummy int.
#define BITNET_VOID(expr) [&] { expr; return 0; }

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() {
  static auto real = reinterpret_cast<void (*)(Mutex*)>(Real("_ZN4absl@5Mutex4LockEv"));
  Locking(this, 0, BITNET_VOID(real(this)));
}

void Mutex::ReaderLock() {
  static auto real = reinterpret_cast<void (*)(Mutex*)>(Real("_ZN4absl@5Mutex10ReaderLockEv"));
  Locking(this, kRead, BITNET_VOID(real(this)));
}

bool Mutex::TryLock() {
  static auto real = reinterpret_cast<bool (*)(Mutex*)>(Real("_ZN4absl@5Mutex7TryLockEv"));
  Outermost scope;
  if (scope.outer) __tsan_mutex_pre_lock(this, kTry);
  const bool locked = real(this);
  if (scope.outer) __tsan_mutex_post_lock(this, kTry | (locked ? 0 : kTryFailed), 0);
  return locked;
}

bool Mutex::ReaderTryLock() {
  static auto real = reinterpret_cast<bool (*)(Mutex*)>(Real("_ZN4absl@5Mutex13ReaderTryLockEv"));
  Outermost scope;
  if (scope.outer) __tsan_mutex_pre_lock(this, kRead | kTry);
  const bool locked = real(this);
  if (scope.outer) __tsan_mutex_post_lock(this, kRead | kTry | (locked ? 0 : kTryFailed), 0);
  return locked;
}

void Mutex::Unlock() {
  static auto real = reinterpret_cast<void (*)(Mutex*)>(Real("_ZN4absl@5Mutex6UnlockEv"));
  Outermost scope;
  if (scope.outer) __tsan_mutex_pre_unlock(this, 0);
  real(this);
  if (scope.outer) __tsan_mutex_post_unlock(this, 0);
}

void Mutex::ReaderUnlock() {
  static auto real = reinterpret_cast<void (*)(Mutex*)>(Real("_ZN4absl@5Mutex12ReaderUnlockEv"));
  Outermost scope;
  if (scope.outer) __tsan_mutex_pre_unlock(this, kRead);
  real(this);
  if (scope.outer) __tsan_mutex_post_unlock(this, kRead);
}

void Mutex::LockWhen(const Condition& cond) {
  static auto real = reinterpret_cast<void (*)(Mutex*, const Condition&)>(
      Real("_ZN4absl@5Mutex8LockWhenERKNS0_9ConditionE"));
  Locking(this, 0, BITNET_VOID(real(this, cond)));
}

void Mutex::ReaderLockWhen(const Condition& cond) {
  static auto real = reinterpret_cast<void (*)(Mutex*, const Condition&)>(
      Real("_ZN4absl@5Mutex14ReaderLockWhenERKNS0_9ConditionE"));
  Locking(this, kRead, BITNET_VOID(real(this, cond)));
}

// The *WithTimeout/*WithDeadline variants return whether `cond` held; the
// mutex is held on return either way.
bool Mutex::LockWhenWithTimeout(const Condition& cond, Duration timeout) {
  static auto real = reinterpret_cast<bool (*)(Mutex*, const Condition&, Duration)>(
      Real("_ZN4absl@5Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE"));
  return Locking(this, 0, [&] { return real(this, cond, timeout); });
}

bool Mutex::LockWhenWithDeadline(const Condition& cond, Time deadline) {
  static auto real = reinterpret_cast<bool (*)(Mutex*, const Condition&, Time)>(
      Real("_ZN4absl@5Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE"));
  return Locking(this, 0, [&] { return real(this, cond, deadline); });
}

bool Mutex::ReaderLockWhenWithTimeout(const Condition& cond, Duration timeout) {
  static auto real = reinterpret_cast<bool (*)(Mutex*, const Condition&, Duration)>(
      Real("_ZN4absl@5Mutex25ReaderLockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE"));
  return Locking(this, kRead, [&] { return real(this, cond, timeout); });
}

bool Mutex::ReaderLockWhenWithDeadline(const Condition& cond, Time deadline) {
  static auto real = reinterpret_cast<bool (*)(Mutex*, const Condition&, Time)>(
      Real("_ZN4absl@5Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE"));
  return Locking(this, kRead, [&] { return real(this, cond, deadline); });
}

void Mutex::Await(const Condition& cond) {
  static auto real = reinterpret_cast<void (*)(Mutex*, const Condition&)>(
      Real("_ZN4absl@5Mutex5AwaitERKNS0_9ConditionE"));
  Waiting(this, BITNET_VOID(real(this, cond)));
}

bool Mutex::AwaitWithTimeout(const Condition& cond, Duration timeout) {
  static auto real = reinterpret_cast<bool (*)(Mutex*, const Condition&, Duration)>(
      Real("_ZN4absl@5Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE"));
  return Waiting(this, [&] { return real(this, cond, timeout); });
}

bool Mutex::AwaitWithDeadline(const Condition& cond, Time deadline) {
  static auto real = reinterpret_cast<bool (*)(Mutex*, const Condition&, Time)>(
      Real("_ZN4absl@5Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE"));
  return Waiting(this, [&] { return real(this, cond, deadline); });
}

void CondVar::Wait(Mutex* mu) {
  static auto real = reinterpret_cast<void (*)(CondVar*, Mutex*)>(
      Real("_ZN4absl@7CondVar4WaitEPNS0_5MutexE"));
  Waiting(mu, BITNET_VOID(real(this, mu)));
}

bool CondVar::WaitWithTimeout(Mutex* mu, Duration timeout) {
  static auto real = reinterpret_cast<bool (*)(CondVar*, Mutex*, Duration)>(
      Real("_ZN4absl@7CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE"));
  return Waiting(mu, [&] { return real(this, mu, timeout); });
}

bool CondVar::WaitWithDeadline(Mutex* mu, Time deadline) {
  static auto real = reinterpret_cast<bool (*)(CondVar*, Mutex*, Time)>(
      Real("_ZN4absl@7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE"));
  return Waiting(mu, [&] { return real(this, mu, deadline); });
}

// Notification, BlockingCounter and Barrier: a release by the notifying
// thread, an acquire by the waiting one, on the object's address.
void Notification::Notify() {
  static auto real =
      reinterpret_cast<void (*)(Notification*)>(Real("_ZN4absl@12Notification6NotifyEv"));
  Outermost scope;
  if (scope.outer) __tsan_release(this);
  real(this);
}

void Notification::WaitForNotification() const {
  static auto real = reinterpret_cast<void (*)(const Notification*)>(
      Real("_ZNK4absl@12Notification19WaitForNotificationEv"));
  Outermost scope;
  real(this);
  if (scope.outer) __tsan_acquire(const_cast<Notification*>(this));
}

bool Notification::WaitForNotificationWithTimeout(Duration timeout) const {
  static auto real = reinterpret_cast<bool (*)(const Notification*, Duration)>(
      Real("_ZNK4absl@12Notification30WaitForNotificationWithTimeoutENS0_8DurationE"));
  Outermost scope;
  const bool notified = real(this, timeout);
  if (scope.outer && notified) __tsan_acquire(const_cast<Notification*>(this));
  return notified;
}

bool Notification::WaitForNotificationWithDeadline(Time deadline) const {
  static auto real = reinterpret_cast<bool (*)(const Notification*, Time)>(
      Real("_ZNK4absl@12Notification31WaitForNotificationWithDeadlineENS0_4TimeE"));
  Outermost scope;
  const bool notified = real(this, deadline);
  if (scope.outer && notified) __tsan_acquire(const_cast<Notification*>(this));
  return notified;
}

bool BlockingCounter::DecrementCount() {
  static auto real = reinterpret_cast<bool (*)(BlockingCounter*)>(
      Real("_ZN4absl@15BlockingCounter14DecrementCountEv"));
  Outermost scope;
  if (scope.outer) __tsan_release(this);
  return real(this);
}

void BlockingCounter::Wait() {
  static auto real =
      reinterpret_cast<void (*)(BlockingCounter*)>(Real("_ZN4absl@15BlockingCounter4WaitEv"));
  Outermost scope;
  real(this);
  if (scope.outer) __tsan_acquire(this);
}

bool Barrier::Block() {
  static auto real = reinterpret_cast<bool (*)(Barrier*)>(Real("_ZN4absl@7Barrier5BlockEv"));
  Outermost scope;
  if (scope.outer) __tsan_release(this);
  const bool last = real(this);
  if (scope.outer) __tsan_acquire(this);
  return last;
}

ABSL_NAMESPACE_END
}  // namespace absl

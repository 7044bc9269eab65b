// main() of every GoogleTest binary here: GoogleTest's own, plus a hang
// watchdog.
//
// ctest runs each test case in a process of its own. A deadlocked case
// would otherwise block the whole run until CI's time limit, and CI would
// then show only that the run stopped, not where. So if one case (or the
// process's exit after it) runs longer than BITNET_TEST_WATCHDOG_SECONDS
// (default 300; the slowest case takes about 6 s on CI's two cores), the
// watchdog prints the case's name and every thread's innermost 24 frames
// (through gdb, where it is installed) and aborts: that case fails, with the
// stacks in `ctest --output-on-failure`'s log, and the run goes on. 0 turns it
// off (e.g. while stepping through a test in a debugger).
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>

#include "gtest/gtest.h"

namespace {

using Clock = std::chrono::steady_clock;

// Leaked on purpose: the watchdog thread also watches the process's exit,
// after static destructors have started.
struct Watched {
  std::mutex mu;
  std::condition_variable changed;
  std::string what = "start-up (before the first test)";
  Clock::time_point since = Clock::now();
};

int WatchdogSeconds() {
  const char* text = std::getenv("BITNET_TEST_WATCHDOG_SECONDS");
  if (text == nullptr) return 300;
  char* end = nullptr;
  const long seconds = std::strtol(text, &end, 10);
  if (*text == '\0' || *end != '\0' || seconds < 0 || seconds > 86400) {
    std::fprintf(stderr,
                 "BITNET_TEST_WATCHDOG_SECONDS=%s is not a whole number of "
                 "seconds in [0, 86400]; using 300\n",
                 text);
    return 300;
  }
  return static_cast<int>(seconds);
}

// Every thread's stack, from gdb attached to this process. Best effort: no
// gdb, or a kernel that forbids attaching, prints only why.
void PrintAllStacks() {
  const pid_t self = getpid();
  // Under Yama's ptrace_scope 1 a process may only be attached to by its
  // ancestors, unless it names its tracer; gdb is our child.
  prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
  std::fflush(nullptr);
  const pid_t child = fork();
  if (child == 0) {
    const std::string pid = std::to_string(self);
    dup2(STDERR_FILENO, STDOUT_FILENO);
    execlp("gdb", "gdb", "-nx", "-batch", "-p", pid.c_str(), "-ex",
           "thread apply all bt 24", static_cast<char*>(nullptr));
    std::fprintf(stderr, "[watchdog] no stacks: gdb could not be started\n");
    _exit(127);
  }
  if (child > 0) {
    int status = 0;
    waitpid(child, &status, 0);
  }
}

void Watch(Watched* w, int seconds) {
  const auto limit = std::chrono::seconds(seconds);
  std::unique_lock<std::mutex> lock(w->mu);
  // Each change (a test starting or ending) moves `since`, and so the end.
  while (Clock::now() < w->since + limit) {
    w->changed.wait_until(lock, w->since + limit);
  }
  std::fprintf(stderr,
               "\n[watchdog] %s has run for more than %d s "
               "(BITNET_TEST_WATCHDOG_SECONDS): printing every thread's "
               "stack and aborting\n",
               w->what.c_str(), seconds);
  PrintAllStacks();
  std::abort();
}

class WatchdogListener : public ::testing::EmptyTestEventListener {
 public:
  explicit WatchdogListener(Watched* w) : w_(w) {}

  void OnTestStart(const ::testing::TestInfo& info) override {
    Set(std::string("test ") + info.test_suite_name() + "." + info.name());
  }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    Set(std::string("the time after test ") + info.test_suite_name() + "." +
        info.name());
  }
  void OnTestProgramEnd(const ::testing::UnitTest&) override {
    Set("the process's exit (after every test passed or failed)");
  }

 private:
  void Set(std::string what) {
    std::lock_guard<std::mutex> lock(w_->mu);
    w_->what = std::move(what);
    w_->since = Clock::now();
    w_->changed.notify_all();
  }

  Watched* w_;
};

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const int seconds = WatchdogSeconds();
  if (seconds > 0) {
    auto* watched = new Watched();
    std::thread(Watch, watched, seconds).detach();
    ::testing::UnitTest::GetInstance()->listeners().Append(
        new WatchdogListener(watched));
  }
  return RUN_ALL_TESTS();
}

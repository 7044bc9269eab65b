// The hang watchdog of test_main.cc, checked by CTest's test_watchdog: the
// one case here outlives a 1 s limit, so the watchdog must name it and abort
// the process long before the case would end on its own.
#include <chrono>
#include <thread>

#include "gtest/gtest.h"

namespace {

// Disabled: it only runs where test_watchdog asks for it.
TEST(WatchdogSelfTest, DISABLED_OutlivesTheLimit) {
  std::this_thread::sleep_for(std::chrono::seconds(60));
  ADD_FAILURE() << "the watchdog let this case run for 60 s";
}

}  // namespace

// One registry request's outcome, awaited by the test thread: pass
// Callback() as BatchRequest::on_done, then Await() the RequestResult.
// Shared by registry_test.cc and multi_device_test.cc.
#ifndef BITNET_TESTS_REQUEST_REPLY_H_
#define BITNET_TESTS_REQUEST_REPLY_H_

#include <functional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "server/batching/dynamic_batcher.h"

namespace bitnet::testing {

struct Reply {
  absl::Mutex mu;
  bool done ABSL_GUARDED_BY(mu) = false;
  RequestResult result ABSL_GUARDED_BY(mu);

  std::function<void(RequestResult)> Callback() {
    return [this](RequestResult r) {
      absl::MutexLock lock(&mu);
      result = std::move(r);
      done = true;
    };
  }
  // Bounded, so that a request stuck on a held device fails the test
  // instead of hanging it.
  RequestResult Await() {
    absl::MutexLock lock(&mu);
    if (!mu.AwaitWithTimeout(absl::Condition(&done), absl::Seconds(60))) {
      ADD_FAILURE() << "no answer within 60 s";
      RequestResult timed_out;
      timed_out.status = absl::DeadlineExceededError("test: no answer");
      return timed_out;
    }
    return result;
  }
  bool Done() {
    absl::MutexLock lock(&mu);
    return done;
  }
};

}  // namespace bitnet::testing

#endif  // BITNET_TESTS_REQUEST_REPLY_H_

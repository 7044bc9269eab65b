// bitnet-load --api=stream: requests sent as items of long-lived
// Inference.InferStream calls instead of unary Infer calls.
//
// A fixed set of streams, `streams_per_client` on every Client (so on every
// connection), each with a writer thread that sends the items queued for it
// and a reader thread that matches answers to items by request_id (the
// server answers in completion order). An item's `done` runs once, on its
// stream's reader thread: with the item's own code (OK, or the error the
// server put in the answer), or, when the stream ended before answering it,
// with the stream's final status.
//
// Items carry no deadline of their own: a stream has one deadline for its
// whole life (`lifetime`), as the API has.
#ifndef BITNET_CLIENT_LOAD_STREAMS_H_
#define BITNET_CLIENT_LOAD_STREAMS_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "bitnet/v1/inference.pb.h"
#include "client/client.h"

namespace bitnet {

class StreamSender {
 public:
  using Done = std::function<void(absl::StatusCode)>;

  // Opens the streams (clients are not owned and must outlive this object).
  StreamSender(const std::vector<std::unique_ptr<Client>>& clients, int streams_per_client,
               absl::Duration lifetime);
  // Close().
  ~StreamSender();

  StreamSender(const StreamSender&) = delete;
  StreamSender& operator=(const StreamSender&) = delete;

  // Queues `request` (sent with a request_id of our own) on stream
  // `index % streams()`; `done` runs exactly once. Thread-safe.
  void Send(size_t index, std::shared_ptr<const v1::InferRequest> request, Done done);

  // Half-closes every stream once its queue is sent and waits for every
  // answer and the streams' ends; items left unanswered get their stream's
  // final status (UNAVAILABLE when it ended OK without answering them).
  // Idempotent. Send() must not be called after it.
  void Close();

  size_t streams() const { return streams_.size(); }

 private:
  class Stream;
  std::vector<std::unique_ptr<Stream>> streams_;
};

}  // namespace bitnet

#endif  // BITNET_CLIENT_LOAD_STREAMS_H_

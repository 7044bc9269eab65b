#include "client/load_streams.h"

#include <deque>
#include <map>
#include <string>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace bitnet {

// One InferStream with its writer and reader threads. The writer sends the
// queue in order and half-closes once Close() asked and the queue is empty
// (or the stream broke); the reader delivers answers, and after the stream's
// end waits for the writer (gRPC allows Finish() only with no Write() in
// progress), calls Finish() and fails whatever was never answered.
class StreamSender::Stream {
 public:
  Stream(Client* client, absl::Duration lifetime) : stream_(client->OpenInferStream(lifetime)) {
    writer_ = std::thread([this] { WriteLoop(); });
    reader_ = std::thread([this] { ReadLoop(); });
  }

  ~Stream() { Close(); }

  void Send(std::shared_ptr<const v1::InferRequest> request, Done done) {
    absl::StatusCode code;
    {
      absl::MutexLock lock(&mu_);
      if (!finished_) {
        // Sent by the writer, or failed by the reader at the stream's end.
        queue_.push_back({std::move(request), std::move(done)});
        return;
      }
      code = final_code_;
    }
    done(code);
  }

  void Close() {
    {
      absl::MutexLock lock(&mu_);
      closing_ = true;
    }
    if (writer_.joinable()) writer_.join();
    if (reader_.joinable()) reader_.join();
  }

 private:
  struct Item {
    std::shared_ptr<const v1::InferRequest> request;
    Done done;
  };

  void WriteLoop() {
    v1::InferRequest message;
    uint64_t next_id = 0;
    while (true) {
      Item item;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return !queue_.empty() || closing_ || ended_;
        };
        mu_.Await(absl::Condition(&ready));
        if (ended_ || queue_.empty()) break;
        item = std::move(queue_.front());
        queue_.pop_front();
      }
      std::string id = absl::StrCat(next_id++);
      {
        absl::MutexLock lock(&mu_);
        if (ended_) {
          queue_.push_front(std::move(item));  // the reader fails it
          break;
        }
        pending_.emplace(id, std::move(item.done));
      }
      // A copy to carry our request_id: the pool's requests are shared.
      message = *item.request;
      message.set_request_id(std::move(id));
      if (!stream_->Write(message)) break;  // broken: the reader sees the end
    }
    stream_->WritesDone();
    absl::MutexLock lock(&mu_);
    writer_done_ = true;
  }

  void ReadLoop() {
    v1::InferStreamResponse answer;
    while (stream_->Read(&answer)) {
      Done done;
      {
        absl::MutexLock lock(&mu_);
        auto it = pending_.find(answer.request_id());
        if (it == pending_.end()) continue;  // not ours: nothing to match
        done = std::move(it->second);
        pending_.erase(it);
      }
      done(answer.has_response() ? absl::StatusCode::kOk
                                 : static_cast<absl::StatusCode>(answer.error().code()));
    }
    std::vector<Done> left;
    {
      absl::MutexLock lock(&mu_);
      ended_ = true;  // wakes the writer, which half-closes and stops
      mu_.Await(absl::Condition(&writer_done_));
    }
    const absl::Status status = stream_->Finish();
    {
      absl::MutexLock lock(&mu_);
      // An OK end with items unanswered cannot happen with our server; call
      // it UNAVAILABLE rather than pretend they succeeded.
      final_code_ = status.ok() ? absl::StatusCode::kUnavailable : status.code();
      finished_ = true;
      for (auto& [id, done] : pending_) left.push_back(std::move(done));
      for (Item& item : queue_) left.push_back(std::move(item.done));
      pending_.clear();
      queue_.clear();
    }
    for (Done& done : left) done(status.ok() ? absl::StatusCode::kUnavailable : status.code());
  }

  std::unique_ptr<InferStream> stream_;
  absl::Mutex mu_;
  std::deque<Item> queue_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Done> pending_ ABSL_GUARDED_BY(mu_);  // request_id -> done
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;  // the reader saw the stream's end
  bool writer_done_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;  // Finish() returned
  absl::StatusCode final_code_ ABSL_GUARDED_BY(mu_) = absl::StatusCode::kUnknown;
  std::thread writer_;
  std::thread reader_;
};

StreamSender::StreamSender(const std::vector<std::unique_ptr<Client>>& clients,
                           int streams_per_client, absl::Duration lifetime) {
  for (int k = 0; k < streams_per_client; ++k) {
    for (const auto& client : clients) {
      streams_.push_back(std::make_unique<Stream>(client.get(), lifetime));
    }
  }
}

StreamSender::~StreamSender() { Close(); }

void StreamSender::Send(size_t index, std::shared_ptr<const v1::InferRequest> request,
                        Done done) {
  streams_[index % streams_.size()]->Send(std::move(request), std::move(done));
}

void StreamSender::Close() {
  for (auto& stream : streams_) stream->Close();
}

}  // namespace bitnet

// Host memory for row matrices (batch inputs and outputs), and a read-only
// view of rows in a shared buffer.
//
// A HostBuffer is allocated by whoever knows what memory is best for the
// device that will read it: Backend::AllocateHostBuffer gives page-locked
// (pinned) memory on a GPU backend, so the device copies straight from and
// into the batch buffers (DMA) without staging copies on the host, and
// ordinary memory on the CPU. The batcher holds its batch buffers as
// HostBuffers and reuses them.
#ifndef BITNET_SERVER_HOST_HOST_BUFFER_H_
#define BITNET_SERVER_HOST_HOST_BUFFER_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "server/host/element_type.h"

namespace bitnet {

// Owns `bytes` bytes of host memory, freed by its release function.
// Movable, not copyable. Thread-compatible.
class HostBuffer {
 public:
  using Release = std::function<void(void* data)>;

  // Ordinary memory, 64-byte aligned. Never null for bytes > 0 (throws
  // std::bad_alloc like operator new when out of memory).
  static HostBuffer Allocate(size_t bytes);

  HostBuffer() = default;
  // Takes ownership of `data` (`bytes` long); `release(data)` frees it.
  // `pinned`: page-locked memory a GPU can copy from and into directly.
  HostBuffer(void* data, size_t bytes, bool pinned, Release release);
  HostBuffer(HostBuffer&& other) noexcept;
  HostBuffer& operator=(HostBuffer&& other) noexcept;
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
  ~HostBuffer();

  // The memory is mutable through a const buffer (like a pointer).
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  bool pinned() const { return pinned_; }
  explicit operator bool() const { return data_ != nullptr; }

 private:
  void Reset();

  void* data_ = nullptr;
  size_t bytes_ = 0;
  bool pinned_ = false;
  Release release_;
};

// Makes host buffers of at least `bytes` bytes; never fails (falls back to
// HostBuffer::Allocate). Must be thread-safe.
using HostAllocator = std::function<HostBuffer(size_t bytes)>;

// `count` elements of `dtype` in host memory that `owner` keeps alive: one
// request's rows inside a batch's output buffer. Copyable (copies share the
// buffer); the memory is freed or reused once every view of it is gone.
class SharedRows {
 public:
  SharedRows() = default;
  SharedRows(std::shared_ptr<const void> owner, const void* data,
             ElementType dtype, int64_t count)
      : owner_(std::move(owner)), data_(data), dtype_(dtype), count_(count) {}
  // fp32 values owned by the view (tests, fakes).
  static SharedRows FromFloats(std::vector<float> values);

  const void* data() const { return data_; }
  ElementType dtype() const { return dtype_; }
  // Elements (not bytes).
  int64_t size() const { return count_; }
  bool empty() const { return count_ == 0; }
  // Element `i` as fp32 (exact for every dtype).
  float operator[](int64_t i) const;
  // All elements as fp32.
  std::vector<float> ToFloats() const;

 private:
  std::shared_ptr<const void> owner_;
  const void* data_ = nullptr;
  ElementType dtype_ = ElementType::kF32;
  int64_t count_ = 0;
};

}  // namespace bitnet

#endif  // BITNET_SERVER_HOST_HOST_BUFFER_H_

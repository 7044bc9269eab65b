#include "server/host/host_buffer.h"

#include <new>
#include <utility>

namespace bitnet {

HostBuffer HostBuffer::Allocate(size_t bytes) {
  if (bytes == 0) return HostBuffer();
  void* data = ::operator new(bytes, std::align_val_t{64});
  return HostBuffer(data, bytes, /*pinned=*/false, [](void* p) {
    ::operator delete(p, std::align_val_t{64});
  });
}

HostBuffer::HostBuffer(void* data, size_t bytes, bool pinned, Release release)
    : data_(data), bytes_(bytes), pinned_(pinned), release_(std::move(release)) {}

HostBuffer::HostBuffer(HostBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)),
      pinned_(std::exchange(other.pinned_, false)),
      release_(std::move(other.release_)) {}

HostBuffer& HostBuffer::operator=(HostBuffer&& other) noexcept {
  if (this != &other) {
    Reset();
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    pinned_ = std::exchange(other.pinned_, false);
    release_ = std::move(other.release_);
  }
  return *this;
}

HostBuffer::~HostBuffer() { Reset(); }

void HostBuffer::Reset() {
  if (data_ != nullptr && release_) release_(data_);
  data_ = nullptr;
  bytes_ = 0;
  pinned_ = false;
  release_ = nullptr;
}

SharedRows SharedRows::FromFloats(std::vector<float> values) {
  auto owned = std::make_shared<std::vector<float>>(std::move(values));
  const void* data = owned->data();
  const auto count = static_cast<int64_t>(owned->size());
  return SharedRows(std::move(owned), data, ElementType::kF32, count);
}

float SharedRows::operator[](int64_t i) const {
  float v;
  ConvertElements(static_cast<const char*>(data_) + i * ElementBytes(dtype_),
                  dtype_, &v, ElementType::kF32, 1);
  return v;
}

std::vector<float> SharedRows::ToFloats() const {
  std::vector<float> out(static_cast<size_t>(count_));
  ConvertElements(data_, dtype_, out.data(), ElementType::kF32, count_);
  return out;
}

}  // namespace bitnet

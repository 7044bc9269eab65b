// The CUDA backend: runs a model's layers with the CUDA ternary kernels
// (kernels/cuda/ternary_cuda.h) on one GPU.
//
// Load() validates the model, uploads every layer's weights once in the
// kernels' execution layouts (only the layout its act_quant mode needs), and
// preallocates everything Forward() needs: pinned host staging buffers for
// input and output (cudaHostAlloc), two device activation buffers of
// [max_rows, widest layer] fp32, one zeroed workspace sized for every batch
// size up to max_rows (and fp32/fp16/bf16 first-layer input), and its own
// stream; then warms every batch-size class up in fp32 and in fp16.
// ForwardRows() copies the input in (DMA straight from the caller's buffer
// when it is pinned, i.e. the batcher's buffers from AllocateHostBuffer;
// else through the staging buffer), launches all layers back to back on that
// stream (bias and activation fused into each layer's epilogue; the next
// layer's int8 quantization is its own small launch, since it needs
// whole-row absmax), copies the output back (into the caller's pinned buffer
// directly, or through staging) and synchronizes once. fp16/bf16 rows go in
// and out as such: the first layer reads them, the last layer's epilogue
// writes them (round to nearest even, as the host would); the transfers are
// half the size.
//
// Intermediates stay fp32 so that a layer with int8 activations quantizes
// exactly the values the CPU would: int8 models (the demo models) then match
// ReferenceForward bit for bit for identity/ReLU layers. Layers in "none" mode
// run on fp16 tensor cores (see kernels/cuda/ternary_cuda.h for the error).
//
// The backend never loads cuBLAS.
#ifndef BITNET_SERVER_RUNTIME_CUDA_BACKEND_H_
#define BITNET_SERVER_RUNTIME_CUDA_BACKEND_H_

#include <memory>

#include "absl/status/statusor.h"
#include "server/runtime/backend.h"

namespace bitnet {

// A backend bound to GPU `device_ordinal`. Errors: UNAVAILABLE when there is
// no such usable GPU (none visible, ordinal out of range, compute capability
// below 8.0), INTERNAL for other CUDA failures.
// The returned backend is thread-safe: Load() may be called concurrently, and
// each instance it returns is independent (own weights, buffers and stream).
// An instance is thread-compatible (callers serialize its Forward()).
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(int device_ordinal);

}  // namespace bitnet

#endif  // BITNET_SERVER_RUNTIME_CUDA_BACKEND_H_

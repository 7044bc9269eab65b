// Element types of host row matrices (batch inputs and outputs) and the
// conversions and checks the serving path runs on every element: fp16 and
// bf16 <-> fp32, finiteness. Hot loops: fp16 conversions use F16C (x86
// AVX + F16C) when the CPU has it, chosen once at run time, else a scalar
// path; the *Scalar functions are that fallback, exposed so tests can compare
// the two. Results are the same either way: narrowing rounds to nearest,
// ties to even, overflow gives +-inf, NaN stays NaN (quiet; the payload may
// differ between the paths), subnormals are kept.
//
// Pure functions, thread-safe. Buffers may not overlap unless stated.
#ifndef BITNET_SERVER_HOST_ELEMENT_TYPE_H_
#define BITNET_SERVER_HOST_ELEMENT_TYPE_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace bitnet {

// Little-endian IEEE binary32, binary16 and bfloat16.
enum class ElementType : uint8_t { kF32, kF16, kBF16 };

// 4, 2, 2.
constexpr size_t ElementBytes(ElementType type) {
  return type == ElementType::kF32 ? 4 : 2;
}
// "f32", "f16", "bf16".
std::string_view ElementTypeName(ElementType type);

// Converts `count` elements of `from` at `src` to `to` at `dst` (a plain copy
// when the types are equal).
void ConvertElements(const void* src, ElementType from, void* dst,
                     ElementType to, int64_t count);
// The scalar path of ConvertElements (reference for tests).
void ConvertElementsScalar(const void* src, ElementType from, void* dst,
                           ElementType to, int64_t count);

// Converts `count` elements of `from` at the start of `buffer` to fp32 in
// place (the buffer must hold count * 4 bytes). fp32: nothing to do.
void WidenToF32InPlace(void* buffer, ElementType from, int64_t count);

// Index of the first NaN or infinite element among `count` elements of
// `type` at `data`, or -1 if all are finite. Reads the bits only (no
// conversion); vectorizes.
int64_t FindNonFinite(const void* data, ElementType type, int64_t count);

// Whether ConvertElements uses F16C on this CPU.
bool HostHasF16c();

}  // namespace bitnet

#endif  // BITNET_SERVER_HOST_ELEMENT_TYPE_H_

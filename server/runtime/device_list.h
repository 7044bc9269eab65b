// The --device flag: which devices serve models, one model instance per
// listed device.
//
//   auto            the first GPU if one is visible, else the CPU (one instance)
//   all             every visible GPU (cuda:0 .. cuda:N-1); the CPU when none is
//   cpu             the CPU
//   cuda:N          GPU N
//   a,b,...         a list of cpu / cuda:N entries, one instance each
//                   ("cuda:0,cuda:1"; "cpu,cpu" runs two CPU instances, for
//                   tests and for trying replicas without a GPU)
//
// "auto" and "all" stand alone. A GPU may appear once; "cpu" may repeat.
// Knows nothing of CUDA: the caller says how many GPUs are visible.
#ifndef BITNET_SERVER_RUNTIME_DEVICE_LIST_H_
#define BITNET_SERVER_RUNTIME_DEVICE_LIST_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace bitnet {

// Parses and validates `spec` (the --device value) against `visible_gpus`
// (0 on a machine or build without CUDA). Returns the devices in order:
// "cpu", "cuda:N", or the single entry "auto" (resolved by CreateBackend,
// which falls back to the CPU when the first GPU is unusable).
// Errors (messages name the entry and what was expected):
//   INVALID_ARGUMENT: empty spec or entry, unknown device, "auto"/"all" in a
//     list, the same GPU twice;
//   UNAVAILABLE: cuda:N with N >= visible_gpus (no such GPU is visible).
absl::StatusOr<std::vector<std::string>> ParseDeviceList(std::string_view spec,
                                                         int visible_gpus);

}  // namespace bitnet

#endif  // BITNET_SERVER_RUNTIME_DEVICE_LIST_H_

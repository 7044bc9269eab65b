// Debian's Abseil (20220623) is built with its own absl::string_view, not an
// alias of std::string_view, and the two do not convert implicitly. Public
// headers of this project use std::string_view (as kernels/ does); these
// helpers cross over where .cc files talk to absl::StrCat, absl::Status etc.
#ifndef BITNET_SERVER_MODEL_STRING_VIEW_COMPAT_H_
#define BITNET_SERVER_MODEL_STRING_VIEW_COMPAT_H_

#include <string_view>

#include "absl/strings/string_view.h"

namespace bitnet {

inline absl::string_view ToAbsl(std::string_view s) { return {s.data(), s.size()}; }
inline std::string_view ToStd(absl::string_view s) { return {s.data(), s.size()}; }

}  // namespace bitnet

#endif  // BITNET_SERVER_MODEL_STRING_VIEW_COMPAT_H_

#include "server/runtime/device_list.h"

#include <charconv>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "server/model/string_view_compat.h"

namespace bitnet {
namespace {

constexpr const char* kExpected =
    "expected auto, all, cpu, cuda:N or a comma-separated list of cpu and "
    "cuda:N (e.g. cuda:0,cuda:1)";

// N of "cuda:N" (decimal digits only), or -1.
int CudaOrdinal(std::string_view entry) {
  if (!entry.starts_with("cuda:")) return -1;
  const std::string_view digits = entry.substr(5);
  if (digits.empty() || digits.size() > 6) return -1;
  int ordinal = -1;
  const char* end = digits.data() + digits.size();
  auto [ptr, ec] = std::from_chars(digits.data(), end, ordinal);
  if (ec != std::errc() || ptr != end || digits.front() == '+') return -1;
  return ordinal;
}

std::string VisibleText(int visible_gpus) {
  if (visible_gpus <= 0) {
    return "no GPU is visible to this process (or the build has no CUDA "
           "backend)";
  }
  return absl::StrCat(visible_gpus, " GPU", visible_gpus == 1 ? " is" : "s are",
                      " visible: cuda:0..cuda:", visible_gpus - 1);
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ParseDeviceList(std::string_view spec,
                                                         int visible_gpus) {
  const std::string quoted = absl::StrCat("--device=\"", std::string(spec), "\"");
  if (spec.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(quoted, ": empty; ", kExpected));
  }
  if (spec == "auto") return std::vector<std::string>{"auto"};
  if (spec == "all") {
    if (visible_gpus <= 0) return std::vector<std::string>{"cpu"};
    std::vector<std::string> all;
    for (int i = 0; i < visible_gpus; ++i) all.push_back(absl::StrCat("cuda:", i));
    return all;
  }
  std::vector<std::string> devices;
  std::set<int> gpus;
  for (absl::string_view piece : absl::StrSplit(ToAbsl(spec), ',')) {
    const std::string entry(piece);
    if (entry.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(quoted, ": empty entry in the list; ", kExpected));
    }
    if (entry == "auto" || entry == "all") {
      return absl::InvalidArgumentError(absl::StrCat(
          quoted, ": \"", entry, "\" must stand alone, not in a list; ",
          kExpected));
    }
    if (entry == "cpu") {
      devices.push_back(entry);
      continue;
    }
    const int ordinal = CudaOrdinal(entry);
    if (ordinal < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          quoted, ": unknown device \"", entry, "\"; ", kExpected));
    }
    if (!gpus.insert(ordinal).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          quoted, ": \"", entry,
          "\" is listed twice; list each GPU once (one model instance per "
          "GPU)"));
    }
    if (ordinal >= visible_gpus) {
      return absl::UnavailableError(absl::StrCat(
          quoted, ": \"", entry, "\" asked for, but ",
          VisibleText(visible_gpus)));
    }
    devices.push_back(entry);
  }
  return devices;
}

}  // namespace bitnet

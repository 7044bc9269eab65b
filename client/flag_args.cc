#include "client/flag_args.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/flags/reflection.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

namespace bitnet {

FlagParse ParseFlagArgs(int argc, char** argv, std::vector<std::string>* positional,
                        std::string* error) {
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "-" || !absl::StartsWith(arg, "-")) {
      positional->emplace_back(arg);
      continue;
    }
    arg = absl::StripPrefix(absl::StripPrefix(arg, "-"), "-");
    if (arg == "help" || arg == "h" || arg == "helpfull") return FlagParse::kHelp;
    std::string name(arg.substr(0, arg.find('=')));
    std::optional<std::string> value;
    if (arg.find('=') != absl::string_view::npos) {
      value = std::string(arg.substr(arg.find('=') + 1));
    }
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr && !value.has_value() && absl::StartsWith(name, "no")) {
      absl::CommandLineFlag* negated = absl::FindCommandLineFlag(name.substr(2));
      if (negated != nullptr && negated->IsOfType<bool>()) {
        flag = negated;
        value = "false";
      }
    }
    if (flag == nullptr) {
      *error = absl::StrCat("unknown flag --", name);
      return FlagParse::kError;
    }
    if (!value.has_value()) {
      if (flag->IsOfType<bool>()) {
        value = "true";
      } else if (i + 1 >= argc) {
        *error = absl::StrCat("flag --", name, " needs a value");
        return FlagParse::kError;
      } else {
        value = argv[++i];
      }
    }
    std::string parse_error;
    if (!flag->ParseFrom(*value, &parse_error)) {
      *error = absl::StrCat("--", name, "=", *value, ": ", parse_error);
      return FlagParse::kError;
    }
  }
  return FlagParse::kOk;
}

std::string FlagsHelp(std::string_view file_suffix) {
  const absl::string_view suffix(file_suffix.data(), file_suffix.size());
  std::vector<std::pair<std::string, std::string>> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (!absl::EndsWith(flag->Filename(), suffix)) continue;
    flags.emplace_back(std::string(name),
                       absl::StrCat("  --", name, " (default \"", flag->DefaultValue(),
                                    "\")\n      ", flag->Help(), "\n"));
  }
  std::sort(flags.begin(), flags.end());
  std::string out;
  for (const auto& f : flags) out += f.second;
  return out;
}

}  // namespace bitnet

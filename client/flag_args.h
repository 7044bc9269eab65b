// Command-line parsing shared by bitnet-cli and bitnet-load: Abseil's flag
// registry, but our own error handling. absl::ParseCommandLine exits with 1
// on a bad flag, and both tools promise 2 for usage errors (1 means "the RPC
// failed"), so they parse here and choose the exit code themselves.
#ifndef BITNET_CLIENT_FLAG_ARGS_H_
#define BITNET_CLIENT_FLAG_ARGS_H_

#include <string>
#include <string_view>
#include <vector>

namespace bitnet {

enum class FlagParse { kOk, kHelp, kError };

// Sets every --name=value / --name value flag (bool flags: --name, --noname,
// --name=true|false) in argv[1..]; other arguments (and "-") go to
// `positional` in order. Flags may come before or after positionals.
// kHelp for --help/-h/--helpfull; kError with `error` naming the flag for an
// unknown flag, a missing or unparsable value.
FlagParse ParseFlagArgs(int argc, char** argv, std::vector<std::string>* positional,
                        std::string* error);

// "  --name (default "x")\n      help\n" for every flag defined in a file
// whose path ends with `file_suffix`, sorted by name.
std::string FlagsHelp(std::string_view file_suffix);

}  // namespace bitnet

#endif  // BITNET_CLIENT_FLAG_ARGS_H_

// bitnet-pack's command line, as a function so tests can run it in-process.
//
//   bitnet-pack convert IN.safetensors OUT.safetensors [--scale per-row|per-tensor]
//       [--layers a,b,...] [--activation identity|relu|gelu|silu]
//       [--act-quant int8|none] [--keep-latent]
//   bitnet-pack --demo [--size small|large] OUT.safetensors
//   bitnet-pack inspect FILE.safetensors
//   bitnet-pack --help
//
// Returns the process exit code: 0 ok, 1 runtime error (bad or missing file,
// conversion error), 2 usage error. Reports go to `out`, errors to `err`.
#ifndef BITNET_TOOLS_PACK_CLI_H_
#define BITNET_TOOLS_PACK_CLI_H_

#include <ostream>
#include <string>
#include <vector>

namespace bitnet::pack {

inline constexpr int kExitOk = 0;
inline constexpr int kExitRuntimeError = 1;
inline constexpr int kExitUsage = 2;

// `args` excludes the program name.
int RunBitnetPack(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace bitnet::pack

#endif  // BITNET_TOOLS_PACK_CLI_H_

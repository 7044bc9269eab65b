#include "tools/pack_cli.h"

#include <algorithm>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "server/model/demo_model.h"
#include "server/model/model_file.h"
#include "tools/pack_converter.h"

namespace bitnet::pack {
namespace {

constexpr std::string_view kUsage = R"(usage:
  bitnet-pack convert IN.safetensors OUT.safetensors [options]
      Quantizes float nn.Linear weights (F32, F16 or BF16 tensors <prefix>.weight
      [out, in] and optional <prefix>.bias [out]) to a packed bitnet-serve model.
      --scale per-row|per-tensor   weight scale granularity (default per-row)
      --layers a,b,...             layer prefixes in execution order (default: every
                                   <prefix>.weight, numbers in names sorted numerically)
      --activation NAME            between layers: identity, relu, gelu, silu
                                   (default relu; the last layer is always identity)
      --act-quant int8|none        input activation quantization (default int8)
      --keep-latent                also store the float weights (for fine-tuning)
  bitnet-pack --demo [--size small|large] OUT.safetensors
      Writes the deterministic demo model (large: 4096 -> 11008 -> 4096, default).
  bitnet-pack inspect FILE.safetensors
      Validates a packed model and prints its layers and sizes.
exit codes: 0 ok, 1 runtime error, 2 usage error
)";

struct ParsedArgs {
  std::vector<std::string> positional;
  std::map<std::string, std::string> values;  // --flag value / --flag=value
  bool keep_latent = false;
  bool demo = false;
  bool help = false;
};

// Flags that take a value; all others are booleans.
bool TakesValue(std::string_view flag) {
  return flag == "--scale" || flag == "--layers" || flag == "--activation" ||
         flag == "--act-quant" || flag == "--size";
}

int Usage(std::ostream& err, std::string_view problem) {
  err << "bitnet-pack: " << problem << "\n" << kUsage;
  return kExitUsage;
}

}  // namespace

int RunBitnetPack(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  ParsedArgs parsed;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help" || arg == "-h") {
      parsed.help = true;
    } else if (arg == "--demo") {
      parsed.demo = true;
    } else if (arg == "--keep-latent") {
      parsed.keep_latent = true;
    } else if (absl::StartsWith(arg, "--")) {
      const size_t eq = arg.find('=');
      const std::string flag = arg.substr(0, eq);
      if (!TakesValue(flag)) return Usage(err, "unknown flag " + flag);
      if (parsed.values.contains(flag)) return Usage(err, flag + " given twice");
      if (eq != std::string::npos) {
        parsed.values[flag] = arg.substr(eq + 1);
      } else if (i + 1 < args.size()) {
        parsed.values[flag] = args[++i];
      } else {
        return Usage(err, flag + " needs a value");
      }
    } else {
      parsed.positional.push_back(arg);
    }
  }
  if (parsed.help) {
    out << kUsage;
    return kExitOk;
  }
  auto reject_flags = [&](std::vector<std::string_view> allowed,
                          bool latent_allowed) -> std::optional<int> {
    for (const auto& [flag, unused] : parsed.values) {
      if (std::find(allowed.begin(), allowed.end(), flag) == allowed.end()) {
        return Usage(err, flag + " does not apply to this command");
      }
    }
    if (parsed.keep_latent && !latent_allowed) {
      return Usage(err, "--keep-latent applies only to convert");
    }
    return std::nullopt;
  };

  if (parsed.demo) {
    if (auto rc = reject_flags({"--size"}, false)) return *rc;
    if (parsed.positional.size() != 1) {
      return Usage(err, "--demo takes exactly one output path");
    }
    DemoModelSize size = DemoModelSize::kLarge;
    if (auto it = parsed.values.find("--size"); it != parsed.values.end()) {
      if (it->second == "small") {
        size = DemoModelSize::kSmall;
      } else if (it->second != "large") {
        return Usage(err, "--size is \"" + it->second + "\", expected small or large");
      }
    }
    const Model model = MakeDemoModel(size);
    if (absl::Status s = WriteModelFile(model, parsed.positional[0]); !s.ok()) {
      err << "bitnet-pack: " << s << "\n";
      return kExitRuntimeError;
    }
    out << "wrote " << parsed.positional[0] << "\n" << pack::DescribeModel(model);
    return kExitOk;
  }
  if (parsed.positional.empty()) return Usage(err, "no command given");
  const std::string command = parsed.positional[0];
  if (command == "inspect") {
    if (auto rc = reject_flags({}, false)) return *rc;
    if (parsed.positional.size() != 2) return Usage(err, "inspect takes exactly one file");
    absl::StatusOr<Model> model = ReadModelFile(parsed.positional[1]);
    if (!model.ok()) {
      err << "bitnet-pack: " << model.status() << "\n";
      return kExitRuntimeError;
    }
    out << "file: " << parsed.positional[1] << "\n" << DescribeModel(*model);
    return kExitOk;
  }
  if (command == "convert") {
    if (auto rc = reject_flags({"--scale", "--layers", "--activation", "--act-quant"}, true)) {
      return *rc;
    }
    if (parsed.positional.size() != 3) {
      return Usage(err, "convert takes an input and an output path");
    }
    ConvertOptions options;
    options.keep_latent = parsed.keep_latent;
    if (auto it = parsed.values.find("--scale"); it != parsed.values.end()) {
      if (it->second == "per-row") {
        options.scale = ScaleGranularity::kPerRow;
      } else if (it->second == "per-tensor") {
        options.scale = ScaleGranularity::kPerTensor;
      } else {
        return Usage(err, "--scale is \"" + it->second + "\", expected per-row or per-tensor");
      }
    }
    if (auto it = parsed.values.find("--layers"); it != parsed.values.end()) {
      options.layers = absl::StrSplit(it->second, ',', absl::SkipWhitespace());
      if (options.layers.empty()) return Usage(err, "--layers is empty");
    }
    if (auto it = parsed.values.find("--activation"); it != parsed.values.end()) {
      absl::StatusOr<Activation> a = ParseActivation(it->second);
      if (!a.ok()) return Usage(err, "--activation: " + std::string(a.status().message()));
      options.activation = *a;
    }
    if (auto it = parsed.values.find("--act-quant"); it != parsed.values.end()) {
      absl::StatusOr<ActivationQuant> q = ParseActivationQuant(it->second);
      if (!q.ok()) return Usage(err, "--act-quant: " + std::string(q.status().message()));
      options.act_quant = *q;
    }
    ConvertResult result;
    if (absl::Status s =
            ConvertFile(parsed.positional[1], parsed.positional[2], options, &result);
        !s.ok()) {
      err << "bitnet-pack: " << s << "\n";
      return kExitRuntimeError;
    }
    for (const std::string& name : result.ignored_tensors) {
      err << "bitnet-pack: note: ignored tensor \"" << name << "\" (not in --layers)\n";
    }
    out << "wrote " << parsed.positional[2] << " (layers:";
    for (const std::string& p : result.layer_prefixes) out << " " << p;
    out << ")\n" << DescribeModel(result.model);
    return kExitOk;
  }
  return Usage(err, "unknown command \"" + command + "\"");
}

}  // namespace bitnet::pack

#include "server/service/admin_auth.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace bitnet {

namespace fs = std::filesystem;

absl::StatusOr<std::string> ReadAdminToken(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::error_code ec;
    if (!fs::exists(path, ec)) {
      return absl::NotFoundError(
          absl::StrCat("--admin_token_file: ", path, " does not exist"));
    }
    return absl::PermissionDeniedError(
        absl::StrCat("--admin_token_file: cannot read ", path));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string token(absl::StripAsciiWhitespace(buffer.str()));
  if (token.size() < 16) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--admin_token_file: ", path, " holds a token of ", token.size(),
        " characters; expected at least 16 (e.g. `openssl rand -hex 32`)"));
  }
  return token;
}

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  // Walk all of `a` whatever `b` is; fold the length difference in so that
  // prefixes do not match. volatile keeps the compiler from short-cutting.
  volatile unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) {
    const unsigned char cb =
        i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff = diff | (static_cast<unsigned char>(a[i]) ^ cb);
  }
  return diff == 0;
}

absl::Status CheckAdminToken(std::string_view token, bool header_present,
                             std::string_view header_value) {
  if (token.empty()) {
    return absl::PermissionDeniedError(
        "admin RPCs are disabled on this server; start bitnet-server with "
        "--admin_token_file=<file> (or, with mTLS, --admin_client_names) to "
        "enable them");
  }
  if (!header_present) {
    return absl::UnauthenticatedError(
        "admin RPC without credentials: expected metadata "
        "\"authorization: Bearer <admin token>\"");
  }
  constexpr std::string_view kBearer = "Bearer ";
  std::string_view presented;
  if (header_value.starts_with(kBearer)) {
    presented = header_value.substr(kBearer.size());
  }
  // Compare even when the prefix was wrong, so timing reveals nothing.
  const bool match = ConstantTimeEquals(token, presented);
  if (presented.empty() || !match) {
    return absl::PermissionDeniedError(
        "admin RPC with an invalid token in metadata \"authorization\" "
        "(expected \"Bearer <admin token>\")");
  }
  return absl::OkStatus();
}

absl::Status CheckAdminAccess(std::string_view token,
                              const std::vector<std::string>& client_names,
                              const std::vector<std::string>& peer_names,
                              bool header_present, std::string_view header_value) {
  for (const std::string& peer : peer_names) {
    for (const std::string& allowed : client_names) {
      if (peer == allowed) return absl::OkStatus();
    }
  }
  if (!token.empty() || client_names.empty()) {
    return CheckAdminToken(token, header_present, header_value);
  }
  if (peer_names.empty()) {
    return absl::UnauthenticatedError(
        "admin RPC without credentials: expected a client certificate naming "
        "an admin identity (--admin_client_names)");
  }
  // The names come from a certificate the server verified: not secret.
  std::string names;
  for (const std::string& peer : peer_names) {
    absl::StrAppend(&names, names.empty() ? "" : ", ", "\"", peer, "\"");
  }
  return absl::PermissionDeniedError(absl::StrCat(
      "admin RPC from a client certificate naming ", names,
      ", which is not an admin identity (--admin_client_names)"));
}

absl::StatusOr<std::string> ResolveModelPath(const std::string& repository,
                                             const std::string& relative) {
  if (repository.empty()) {
    return absl::FailedPreconditionError(
        "path: the server has no model repository; start bitnet-server "
        "with --model_repository=<dir>");
  }
  if (relative.empty()) {
    return absl::InvalidArgumentError(
        "path: empty; expected a file path relative to the model repository");
  }
  const fs::path rel(relative);
  if (rel.is_absolute()) {
    return absl::PermissionDeniedError(absl::StrCat(
        "path: \"", relative,
        "\" is absolute; expected a path relative to the model repository"));
  }
  for (const auto& part : rel) {
    if (part == "..") {
      return absl::PermissionDeniedError(absl::StrCat(
          "path: \"", relative,
          "\" contains \"..\"; expected a path inside the model repository"));
    }
  }
  std::error_code ec;
  const fs::path root = fs::canonical(repository, ec);
  if (ec) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--model_repository ", repository, ": ", ec.message()));
  }
  const fs::path joined = root / rel;
  if (!fs::exists(joined, ec)) {
    return absl::NotFoundError(absl::StrCat(
        "path: \"", relative, "\" does not exist in the model repository"));
  }
  // canonical() resolves every symlink, so a link pointing out of the
  // repository shows up as a path that no longer starts with `root`.
  const fs::path real = fs::canonical(joined, ec);
  if (ec) {
    return absl::NotFoundError(
        absl::StrCat("path: \"", relative, "\": ", ec.message()));
  }
  auto [root_end, real_it] =
      std::mismatch(root.begin(), root.end(), real.begin(), real.end());
  if (root_end != root.end()) {
    return absl::PermissionDeniedError(
        absl::StrCat("path: \"", relative,
                     "\" resolves (through a symlink) outside the model "
                     "repository; expected a file inside it"));
  }
  if (!fs::is_regular_file(real, ec)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "path: \"", relative, "\" is not a regular file; expected a model file"));
  }
  return real.string();
}

}  // namespace bitnet

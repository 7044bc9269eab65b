// Admin access control: the bearer token and the model-repository
// confinement of LoadModel paths. Pure functions, thread-safe.
#ifndef BITNET_SERVER_SERVICE_ADMIN_AUTH_H_
#define BITNET_SERVER_SERVICE_ADMIN_AUTH_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace bitnet {

// Reads the admin token from `path`: the file's contents with surrounding
// whitespace (a trailing newline) removed. INVALID_ARGUMENT when the token is
// shorter than 16 characters (a guessable token is worse than none);
// the file's I/O error (NOT_FOUND, PERMISSION_DENIED) otherwise.
absl::StatusOr<std::string> ReadAdminToken(const std::string& path);

// Checks the `authorization` metadata value against `token`:
//   token empty (admin disabled)  -> PERMISSION_DENIED saying how to enable
//   header absent                 -> UNAUTHENTICATED
//   not "Bearer <t>" or t != token -> PERMISSION_DENIED
// The comparison takes time independent of where the strings differ (it
// walks the whole expected token and never returns early), so the token
// cannot be guessed byte by byte from response times.
absl::Status CheckAdminToken(std::string_view token, bool header_present,
                             std::string_view header_value);

// The whole admin check. A client whose verified certificate (mTLS) names
// one of `client_names` (its Common Name or a subject alternative name:
// `peer_names`) passes without a token; anyone else is checked by
// CheckAdminToken. With no token, the outcome for everyone else is
//   no client names configured either -> PERMISSION_DENIED saying how to
//                                        enable admin RPCs
//   no certificate identity presented -> UNAUTHENTICATED
//   a certificate naming someone else -> PERMISSION_DENIED naming it
absl::Status CheckAdminAccess(std::string_view token,
                              const std::vector<std::string>& client_names,
                              const std::vector<std::string>& peer_names,
                              bool header_present, std::string_view header_value);

// Constant-time equality (time depends only on the lengths).
bool ConstantTimeEquals(std::string_view a, std::string_view b);

// Resolves `relative` against the model repository `repository` and returns
// the canonical absolute path of an existing regular file inside it.
//   repository empty          -> FAILED_PRECONDITION (no --model_repository)
//   relative empty            -> INVALID_ARGUMENT
//   absolute path, a ".." component, or a path (after resolving symlinks)
//   outside the repository    -> PERMISSION_DENIED naming the path
//   missing file              -> NOT_FOUND
//   not a regular file        -> INVALID_ARGUMENT
absl::StatusOr<std::string> ResolveModelPath(const std::string& repository,
                                             const std::string& relative);

}  // namespace bitnet

#endif  // BITNET_SERVER_SERVICE_ADMIN_AUTH_H_

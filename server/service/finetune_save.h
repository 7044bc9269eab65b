// Writing model files into the model repository for Admin.SaveModel: path
// confinement for files that may not exist yet, and a crash-safe writer that
// can refuse to replace an existing file.
//
// Crash safety: the bytes go to a temporary file in the destination's
// directory (".<name>.tmp-<pid>-<n>", created O_EXCL), which is fsync'ed and
// then renamed over the destination (or, without overwrite, linked to it,
// which fails atomically if the destination exists), and the directory is
// fsync'ed. A crash at any point leaves the destination either as it was or
// complete; at worst a temporary file is left behind (the name starts with
// '.', so it is easy to spot and delete).
//
// All functions are thread-safe (no shared state besides the file system).
#ifndef BITNET_SERVER_SERVICE_FINETUNE_SAVE_H_
#define BITNET_SERVER_SERVICE_FINETUNE_SAVE_H_

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/model/model.h"

namespace bitnet {

// Resolves a destination `relative` to the model repository `repository`.
// Returns the absolute path to write: the canonical directory (which must
// exist and lie inside the repository after resolving symlinks) joined with
// the file name.
//   repository empty                      -> FAILED_PRECONDITION
//   relative empty, ending in '/', or naming "." or ".."
//                                         -> INVALID_ARGUMENT
//   absolute, a ".." component, or a directory outside the repository
//                                         -> PERMISSION_DENIED naming the path
//   directory missing                     -> NOT_FOUND
//   destination exists but is not a regular file (a directory, a symlink)
//                                         -> INVALID_ARGUMENT
absl::StatusOr<std::string> ResolveModelOutputPath(
    const std::string& repository, const std::string& relative);

// Test hooks: called at each stage of a write; a non-OK status aborts the
// write there (the temporary file is removed), as an I/O error would.
// Stages, in order: "temp_created", "half_written", "written", "synced",
// "published" (the last one's status is ignored: the file is in place). A
// hook may also end the process (a crash test).
using SaveHook = std::function<absl::Status(std::string_view stage)>;

struct SaveModelFileResult {
  int64_t bytes = 0;
};

// Serializes `model` (it must pass ValidateModel) and writes it to `path`
// crash-safely (see the top of this file). Without `overwrite`, an existing
// `path` is ALREADY_EXISTS and stays untouched (checked atomically, by the
// link). Errors: INVALID_ARGUMENT (invalid model), ALREADY_EXISTS,
// INTERNAL naming the path and the system error for I/O failures (the
// destination is unchanged then).
absl::StatusOr<SaveModelFileResult> SaveModelFile(const Model& model,
                                                  const std::string& path,
                                                  bool overwrite,
                                                  const SaveHook& hook = {});

}  // namespace bitnet

#endif  // BITNET_SERVER_SERVICE_FINETUNE_SAVE_H_

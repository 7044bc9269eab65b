#include "server/service/finetune_save.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "server/model/model.h"
#include "server/model/model_file.h"

namespace bitnet {
namespace {

namespace fs = std::filesystem;

absl::Status IoError(const char* what, const std::string& path, int err) {
  return absl::InternalError(absl::StrCat("SaveModel: ", what, " \"", path,
                                          "\": ", std::strerror(err)));
}

// True when `path` equals `root` or lies below it (both canonical).
bool IsInside(const fs::path& root, const fs::path& path) {
  auto r = root.begin();
  auto p = path.begin();
  for (; r != root.end(); ++r, ++p) {
    if (p == path.end() || *r != *p) return false;
  }
  return true;
}

// Closes a file descriptor and removes the temporary file unless released.
class TempFile {
 public:
  TempFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!path_.empty()) ::unlink(path_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  int fd() const { return fd_; }
  const std::string& path() const { return path_; }
  absl::Status Close() {
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) return IoError("closing", path_, errno);
    return absl::OkStatus();
  }
  // The file is now the destination (renamed) or removed by the caller.
  void Release() { path_.clear(); }

 private:
  int fd_;
  std::string path_;
};

absl::Status WriteAll(int fd, const char* data, size_t size,
                      const std::string& path) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return IoError("writing", path, errno);
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status SyncDirectory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return IoError("opening directory", dir, errno);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return IoError("syncing directory", dir, err);
  return absl::OkStatus();
}

absl::Status RunHook(const SaveHook& hook, std::string_view stage) {
  if (!hook) return absl::OkStatus();
  return hook(stage);
}

}  // namespace

absl::StatusOr<std::string> ResolveModelOutputPath(
    const std::string& repository, const std::string& relative) {
  if (repository.empty()) {
    return absl::FailedPreconditionError(
        "SaveModel is disabled: the server has no --model_repository");
  }
  if (relative.empty()) {
    return absl::InvalidArgumentError(
        "path: empty; expected a file path relative to the model repository");
  }
  const fs::path rel(relative);
  if (rel.is_absolute()) {
    return absl::PermissionDeniedError(
        absl::StrCat("path: \"", relative,
                     "\" is absolute; expected a path relative to the model "
                     "repository"));
  }
  for (const fs::path& part : rel) {
    if (part == "..") {
      return absl::PermissionDeniedError(absl::StrCat(
          "path: \"", relative,
          "\" contains \"..\"; paths must stay inside the model repository"));
    }
  }
  const fs::path name = rel.filename();
  if (name.empty() || name == "." || name == "..") {
    return absl::InvalidArgumentError(absl::StrCat(
        "path: \"", relative, "\" does not end in a file name"));
  }
  std::error_code ec;
  const fs::path root = fs::canonical(repository, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("model repository \"", repository,
                     "\" is not accessible: ", ec.message()));
  }
  const fs::path dir = fs::canonical(root / rel.parent_path(), ec);
  if (ec) {
    return absl::NotFoundError(absl::StrCat(
        "path: the directory of \"", relative,
        "\" does not exist in the model repository (", ec.message(), ")"));
  }
  if (!IsInside(root, dir)) {
    return absl::PermissionDeniedError(absl::StrCat(
        "path: \"", relative,
        "\" resolves (through a symbolic link) outside the model repository"));
  }
  if (!fs::is_directory(dir, ec)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "path: the parent of \"", relative, "\" is not a directory"));
  }
  const fs::path target = dir / name;
  const fs::file_status st = fs::symlink_status(target, ec);
  if (!ec && fs::exists(st)) {
    if (fs::is_symlink(st)) {
      return absl::InvalidArgumentError(
          absl::StrCat("path: \"", relative,
                       "\" is a symbolic link; SaveModel only replaces "
                       "regular files"));
    }
    if (!fs::is_regular_file(st)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "path: \"", relative, "\" exists and is not a regular file"));
    }
  }
  return target.string();
}

absl::StatusOr<SaveModelFileResult> SaveModelFile(const Model& model,
                                                  const std::string& path,
                                                  bool overwrite,
                                                  const SaveHook& hook) {
  if (absl::Status s = ValidateModel(model); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("SaveModel: invalid model: ", s.message()));
  }
  const std::string bytes = SerializeModelFile(model);
  if (bytes.empty()) {
    return absl::InternalError("SaveModel: the model could not be serialized");
  }
  const fs::path target(path);
  const std::string dir = target.parent_path().empty()
                              ? std::string(".")
                              : target.parent_path().string();
  if (!overwrite && fs::exists(fs::symlink_status(target))) {
    // Early answer; the link below is what makes it race-free.
    return absl::AlreadyExistsError(absl::StrCat(
        "SaveModel: \"", path, "\" exists; set overwrite to replace it"));
  }

  static std::atomic<uint64_t> counter{0};
  const std::string temp_path =
      (target.parent_path() /
       absl::StrCat(".", target.filename().string(), ".tmp-", ::getpid(), "-",
                    counter.fetch_add(1)))
          .string();
  const int fd = ::open(temp_path.c_str(),
                        O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return IoError("creating temporary file", temp_path, errno);
  TempFile temp(fd, temp_path);
  if (absl::Status s = RunHook(hook, "temp_created"); !s.ok()) return s;

  const size_t half = bytes.size() / 2;
  if (absl::Status s = WriteAll(temp.fd(), bytes.data(), half, temp_path);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = RunHook(hook, "half_written"); !s.ok()) return s;
  if (absl::Status s = WriteAll(temp.fd(), bytes.data() + half,
                                bytes.size() - half, temp_path);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = RunHook(hook, "written"); !s.ok()) return s;
  if (::fsync(temp.fd()) != 0) return IoError("syncing", temp_path, errno);
  if (absl::Status s = temp.Close(); !s.ok()) return s;
  if (absl::Status s = RunHook(hook, "synced"); !s.ok()) return s;

  if (overwrite) {
    if (::rename(temp_path.c_str(), path.c_str()) != 0) {
      return IoError("renaming the temporary file to", path, errno);
    }
    temp.Release();
  } else {
    // link() fails with EEXIST if `path` appeared meanwhile: no clobbering
    // even when two saves race.
    if (::link(temp_path.c_str(), path.c_str()) != 0) {
      if (errno == EEXIST) {
        return absl::AlreadyExistsError(absl::StrCat(
            "SaveModel: \"", path, "\" exists; set overwrite to replace it"));
      }
      return IoError("linking the temporary file to", path, errno);
    }
    // `temp` unlinks the temporary name; the data stays under `path`.
  }
  if (absl::Status s = SyncDirectory(dir); !s.ok()) return s;
  // The file is in place: a hook can still crash the process here, but its
  // status no longer changes the outcome.
  RunHook(hook, "published").IgnoreError();
  return SaveModelFileResult{.bytes = static_cast<int64_t>(bytes.size())};
}

}  // namespace bitnet

// The real bitnet-server binary as a child process, for the tests where
// signals, process exit and the process's own logs matter (fault_test,
// security_test, the soak driver): start it on ephemeral loopback ports,
// read its ports from its log, send it signals, wait for its exit, read its
// resident memory.
//
// The child's stdout and stderr go to a log file; the child gets SIGKILL if
// the test process dies (PR_SET_PDEATHSIG), and the destructor kills and
// reaps it, so a failing test never leaves a server behind.
//
// Thread-safety: one thread drives a ServerProcess; Log(), RssKb() and
// Running() may be called from any thread.
#ifndef BITNET_TESTS_FAULT_SERVER_PROCESS_H_
#define BITNET_TESTS_FAULT_SERVER_PROCESS_H_

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace bitnet::testing {

// Path of the bitnet-server binary: $BITNET_SERVER, else the compile-time
// BITNET_SERVER_BINARY (set by tests/fault.cmake), else empty.
inline std::string ServerBinary() {
  if (const char* env = std::getenv("BITNET_SERVER"); env != nullptr && *env) {
    return env;
  }
#ifdef BITNET_SERVER_BINARY
  return BITNET_SERVER_BINARY;
#else
  return "";
#endif
}

inline std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// The value of `key=` in the first log line holding `event=<event> `, or "".
inline std::string LogField(const std::string& log, const std::string& event,
                            const std::string& key) {
  std::istringstream in(log);
  std::string line;
  const std::string marker = "event=" + event;
  while (std::getline(in, line)) {
    const size_t at = line.find(marker);
    if (at == std::string::npos) continue;
    const size_t after = at + marker.size();
    if (after < line.size() && line[after] != ' ') continue;
    const size_t k = line.find(" " + key + "=", after);
    if (k == std::string::npos) return "";
    const size_t start = k + key.size() + 2;
    const size_t end = line.find(' ', start);
    return line.substr(start, end == std::string::npos ? std::string::npos : end - start);
  }
  return "";
}

class ServerProcess {
 public:
  // Starts `binary args...` with --address=127.0.0.1 --port=0
  // --metrics_address=127.0.0.1 --metrics_port=0 prepended (a later flag in
  // `args` overrides them), output to `log_path`, and waits until the log
  // says "event=serving" (then port() is known). FAILED_PRECONDITION with
  // the log when the process exits first or `timeout` passes.
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(
      const std::string& binary, const std::vector<std::string>& args,
      const std::string& log_path, absl::Duration timeout = absl::Seconds(120)) {
    std::vector<std::string> argv = {binary, "--address=127.0.0.1", "--port=0",
                                     "--metrics_address=127.0.0.1",
                                     "--metrics_port=0"};
    argv.insert(argv.end(), args.begin(), args.end());
    std::unique_ptr<ServerProcess> p(new ServerProcess(log_path));
    const pid_t parent = ::getpid();
    p->pid_ = ::fork();
    if (p->pid_ < 0) return absl::InternalError("fork failed");
    if (p->pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      if (fd < 0) ::_exit(127);
      ::dup2(fd, STDOUT_FILENO);
      ::dup2(fd, STDERR_FILENO);
      ::close(fd);
      std::vector<char*> raw;
      for (std::string& a : argv) raw.push_back(a.data());
      raw.push_back(nullptr);
      ::execv(raw[0], raw.data());
      ::_exit(127);
    }
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      const std::string log = p->Log();
      const std::string port = LogField(log, "serving", "port");
      if (!port.empty()) {
        if (!absl::SimpleAtoi(port, &p->port_) ||
            !absl::SimpleAtoi(LogField(log, "server_started", "metrics_port"),
                              &p->metrics_port_)) {
          return absl::InternalError("unreadable ports in the server log:\n" + log);
        }
        return p;
      }
      if (!p->Running()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "bitnet-server exited during start-up (wait status ", p->wait_status_,
            "); its log:\n", log));
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
    return absl::FailedPreconditionError(
        "bitnet-server did not log event=serving in time; its log:\n" + p->Log());
  }

  ~ServerProcess() {
    if (Running()) {
      ::kill(pid_, SIGKILL);
      WaitExit(absl::Seconds(30));
    }
  }

  pid_t pid() const { return pid_; }
  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }
  std::string Log() const { return ReadWholeFile(log_path_); }

  void Signal(int signal_number) {
    if (Running()) ::kill(pid_, signal_number);
  }

  // True until the process has been reaped.
  bool Running() {
    if (exited_) return false;
    int status = 0;
    const pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exited_ = true;
      wait_status_ = status;
    }
    return !exited_;
  }

  // Waits up to `timeout` for the process to end; its wait status (see
  // waitpid), or nullopt if it is still running.
  std::optional<int> WaitExit(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (Running()) {
      if (absl::Now() >= deadline) return std::nullopt;
      absl::SleepFor(absl::Milliseconds(5));
    }
    return wait_status_;
  }

  // VmRSS of the running process in KiB (/proc/<pid>/status); -1 when gone.
  int64_t RssKb() const {
    std::ifstream in(absl::StrCat("/proc/", pid_, "/status"));
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("VmRSS:", 0) != 0) continue;
      int64_t kb = -1;
      std::istringstream fields(line.substr(6));
      fields >> kb;
      return kb;
    }
    return -1;
  }

 private:
  explicit ServerProcess(std::string log_path) : log_path_(std::move(log_path)) {}

  std::string log_path_;
  pid_t pid_ = -1;
  int port_ = 0;
  int metrics_port_ = -1;
  bool exited_ = false;
  int wait_status_ = 0;
};

// A fresh directory under $TMPDIR (or /tmp), removed with its contents by
// the destructor.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& prefix) {
    const char* tmp = std::getenv("TMPDIR");
    std::string tmpl = absl::StrCat(tmp != nullptr && *tmp ? tmp : "/tmp", "/",
                                    prefix, "_XXXXXX");
    path_ = ::mkdtemp(tmpl.data()) != nullptr ? tmpl : "";
  }
  ~ScratchDir() {
    if (!path_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(path_, ec);
    }
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace bitnet::testing

#endif  // BITNET_TESTS_FAULT_SERVER_PROCESS_H_

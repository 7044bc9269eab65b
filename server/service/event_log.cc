#include "server/service/event_log.h"

#include <cstdio>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace bitnet {
namespace {

void AppendValue(std::string* out, std::string_view value) {
  const bool quote = value.empty() ||
                     value.find_first_of(" \t\n\"=\\") != std::string_view::npos;
  if (!quote) {
    out->append(value);
    return;
  }
  out->push_back('"');
  for (char c : value) {
    switch (c) {
      case '"': out->append("\\\""); break;
      case '\\': out->append("\\\\"); break;
      case '\n': out->append("\\n"); break;
      case '\t': out->append("\\t"); break;
      default: out->push_back(c);
    }
  }
  out->push_back('"');
}

const char* LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarning: return "warning";
    case LogLevel::kError: return "error";
  }
  return "info";
}

}  // namespace

std::string FormatLogFields(std::initializer_list<LogField> fields) {
  std::string line;
  for (const auto& [key, value] : fields) {
    if (!line.empty()) line.push_back(' ');
    line.append(key);
    line.push_back('=');
    AppendValue(&line, value);
  }
  return line;
}

void LogEvent(LogLevel level, std::string_view event,
              std::initializer_list<LogField> fields) {
  std::string line = absl::StrCat(
      "ts=", absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(),
                              absl::UTCTimeZone()),
      " level=", LevelName(level), " event=");
  AppendValue(&line, event);
  const std::string rest = FormatLogFields(fields);
  if (!rest.empty()) absl::StrAppend(&line, " ", rest);
  line.push_back('\n');
  static std::mutex* mu = new std::mutex;
  std::lock_guard<std::mutex> lock(*mu);
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

}  // namespace bitnet

// Structured logs: one line per event on stderr, logfmt style
//   ts=2026-01-02T03:04:05.678Z level=info event=model_loaded model=demo version=1
// Values with spaces, quotes or '=' are double-quoted with escapes, so every
// line parses with any logfmt reader. Thread-safe (lines never interleave).
#ifndef BITNET_SERVER_SERVICE_EVENT_LOG_H_
#define BITNET_SERVER_SERVICE_EVENT_LOG_H_

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace bitnet {

enum class LogLevel { kInfo, kWarning, kError };

using LogField = std::pair<std::string_view, std::string>;

void LogEvent(LogLevel level, std::string_view event,
              std::initializer_list<LogField> fields = {});

// The line LogEvent would write (without the timestamp and newline); for
// tests.
std::string FormatLogFields(std::initializer_list<LogField> fields);

}  // namespace bitnet

#endif  // BITNET_SERVER_SERVICE_EVENT_LOG_H_

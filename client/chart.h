// Line charts as PNG files, with no plotting library: bitnet-load draws
// latency against throughput for sweeps, bitnet-cli finetune the loss curve.
// A built-in 5x7 bitmap font writes titles and tick labels (upper case,
// digits and a little punctuation; other characters print as '?').
// zlib compresses the image data (PNG's IDAT is a zlib stream).
//
// Thread-compatible: pure functions.
#ifndef BITNET_CLIENT_CHART_H_
#define BITNET_CLIENT_CHART_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace bitnet {

struct ChartSeries {
  // Legend text.
  std::string name;
  // Points, drawn in this order and joined by lines; x.size() == y.size().
  std::vector<double> x;
  std::vector<double> y;
};

struct ChartOptions {
  std::string title;
  std::string x_label;
  std::string y_label;
  // Image size in pixels: 200..8000 each.
  int width = 900;
  int height = 560;
  // Logarithmic axes (every value on such an axis must be > 0).
  bool log_x = false;
  bool log_y = false;
};

// An 8-bit RGB image, row-major, 3 bytes per pixel.
struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> pixels;
};

// PNG encoding of `image` (color type 2, 8 bits, no interlace).
// INVALID_ARGUMENT when pixels.size() != width * height * 3 or a side is 0;
// INTERNAL if zlib fails.
absl::StatusOr<std::string> EncodePng(const RgbImage& image);

// Renders the chart. INVALID_ARGUMENT for no series, a series whose x and y
// differ in length, no finite point at all, a non-positive value on a log
// axis, or a size out of range (each message names the series or option).
absl::StatusOr<RgbImage> RenderLineChart(const ChartOptions& options,
                                         const std::vector<ChartSeries>& series);

// RenderLineChart + EncodePng + write to `path` (INTERNAL naming the path
// when it cannot be written).
absl::Status WriteLineChartPng(const std::string& path,
                               const ChartOptions& options,
                               const std::vector<ChartSeries>& series);

// The RGB color of series `index` (a fixed palette, cycled).
uint32_t SeriesColor(int index);

}  // namespace bitnet

#endif  // BITNET_CLIENT_CHART_H_

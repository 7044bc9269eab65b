#include "client/chart.h"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace bitnet {
namespace {

// 5x7 glyphs, one string per row, '#' = ink. Upper case only: charts print
// text upper-cased, which keeps the table small and legible.
struct Glyph {
  char c;
  std::array<const char*, 7> rows;
};

constexpr Glyph kFont[] = {
    {'0', {".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."}},
    {'1', {"..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."}},
    {'2', {".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"}},
    {'3', {"#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."}},
    {'4', {"...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."}},
    {'5', {"#####", "#....", "####.", "....#", "....#", "#...#", ".###."}},
    {'6', {"..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."}},
    {'7', {"#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."}},
    {'8', {".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."}},
    {'9', {".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."}},
    {'A', {".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"}},
    {'B', {"####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."}},
    {'C', {".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."}},
    {'D', {"###..", "#..#.", "#...#", "#...#", "#...#", "#..#.", "###.."}},
    {'E', {"#####", "#....", "#....", "####.", "#....", "#....", "#####"}},
    {'F', {"#####", "#....", "#....", "####.", "#....", "#....", "#...."}},
    {'G', {".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"}},
    {'H', {"#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"}},
    {'I', {".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."}},
    {'J', {"..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."}},
    {'K', {"#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"}},
    {'L', {"#....", "#....", "#....", "#....", "#....", "#....", "#####"}},
    {'M', {"#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"}},
    {'N', {"#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"}},
    {'O', {".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."}},
    {'P', {"####.", "#...#", "#...#", "####.", "#....", "#....", "#...."}},
    {'Q', {".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"}},
    {'R', {"####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"}},
    {'S', {".####", "#....", "#....", ".###.", "....#", "....#", "####."}},
    {'T', {"#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."}},
    {'U', {"#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."}},
    {'V', {"#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."}},
    {'W', {"#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."}},
    {'X', {"#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"}},
    {'Y', {"#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."}},
    {'Z', {"#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"}},
    {'.', {".....", ".....", ".....", ".....", ".....", ".##..", ".##.."}},
    {',', {".....", ".....", ".....", ".....", ".##..", "..#..", ".#..."}},
    {'-', {".....", ".....", ".....", "#####", ".....", ".....", "....."}},
    {'+', {".....", "..#..", "..#..", "#####", "..#..", "..#..", "....."}},
    {'/', {".....", "....#", "...#.", "..#..", ".#...", "#....", "....."}},
    {'(', {"...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#."}},
    {')', {".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#..."}},
    {'%', {"##...", "##..#", "...#.", "..#..", ".#...", "#..##", "...##"}},
    {':', {".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."}},
    {'=', {".....", ".....", "#####", ".....", "#####", ".....", "....."}},
    {'_', {".....", ".....", ".....", ".....", ".....", ".....", "#####"}},
    {'?', {".###.", "#...#", "....#", "...#.", "..#..", ".....", "..#.."}},
    {' ', {".....", ".....", ".....", ".....", ".....", ".....", "....."}},
};

const Glyph& FindGlyph(char c) {
  const char upper = absl::ascii_toupper(static_cast<unsigned char>(c));
  for (const Glyph& g : kFont) {
    if (g.c == upper) return g;
  }
  for (const Glyph& g : kFont) {
    if (g.c == '?') return g;
  }
  return kFont[0];
}

constexpr int kScale = 2;                  // font pixels per glyph pixel
constexpr int kCharWidth = 6 * kScale;     // 5 columns + 1 spacing
constexpr int kCharHeight = 7 * kScale;

class Canvas {
 public:
  Canvas(int width, int height) {
    image_.width = width;
    image_.height = height;
    image_.pixels.assign(static_cast<size_t>(width) * height * 3, 255);
  }
  RgbImage Take() { return std::move(image_); }

  void Set(int x, int y, uint32_t rgb) {
    if (x < 0 || y < 0 || x >= image_.width || y >= image_.height) return;
    uint8_t* p = &image_.pixels[(static_cast<size_t>(y) * image_.width + x) * 3];
    p[0] = static_cast<uint8_t>(rgb >> 16);
    p[1] = static_cast<uint8_t>(rgb >> 8);
    p[2] = static_cast<uint8_t>(rgb);
  }
  void Fill(int x0, int y0, int x1, int y1, uint32_t rgb) {
    for (int y = y0; y <= y1; ++y) {
      for (int x = x0; x <= x1; ++x) Set(x, y, rgb);
    }
  }
  // Bresenham, `thickness` pixels square pen.
  void Line(int x0, int y0, int x1, int y1, uint32_t rgb, int thickness = 1) {
    const int dx = std::abs(x1 - x0), sx = x0 < x1 ? 1 : -1;
    const int dy = -std::abs(y1 - y0), sy = y0 < y1 ? 1 : -1;
    int err = dx + dy;
    for (int guard = 0; guard < 100000; ++guard) {
      Fill(x0, y0, x0 + thickness - 1, y0 + thickness - 1, rgb);
      if (x0 == x1 && y0 == y1) break;
      const int e2 = 2 * err;
      if (e2 >= dy) { err += dy; x0 += sx; }
      if (e2 <= dx) { err += dx; y0 += sy; }
    }
  }
  void Text(int x, int y, const std::string& text, uint32_t rgb) {
    for (char c : text) {
      const Glyph& g = FindGlyph(c);
      for (int row = 0; row < 7; ++row) {
        for (int col = 0; col < 5; ++col) {
          if (g.rows[row][col] == '#') {
            Fill(x + col * kScale, y + row * kScale, x + col * kScale + kScale - 1,
                 y + row * kScale + kScale - 1, rgb);
          }
        }
      }
      x += kCharWidth;
    }
  }

 private:
  RgbImage image_;
};

int TextWidth(const std::string& text) {
  return static_cast<int>(text.size()) * kCharWidth;
}

// One axis: data range -> pixel range, linear or log10.
struct Axis {
  bool log = false;
  double lo = 0, hi = 1;  // in data units
  std::vector<double> ticks;

  double T(double v) const { return log ? std::log10(v) : v; }
  // Fraction of the axis, 0 at lo, 1 at hi.
  double Fraction(double v) const { return (T(v) - T(lo)) / (T(hi) - T(lo)); }
};

double NiceStep(double range, int target_ticks) {
  const double raw = range / target_ticks;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double r = raw / magnitude;
  const double nice = r < 1.5 ? 1 : r < 3 ? 2 : r < 7 ? 5 : 10;
  return nice * magnitude;
}

Axis MakeAxis(double min, double max, bool log) {
  Axis axis;
  axis.log = log;
  if (log) {
    axis.lo = std::pow(10.0, std::floor(std::log10(min)));
    axis.hi = std::pow(10.0, std::ceil(std::log10(max)));
    if (axis.hi <= axis.lo) axis.hi = axis.lo * 10;
    for (double d = axis.lo; d <= axis.hi * 1.0001; d *= 10) {
      axis.ticks.push_back(d);
      if (axis.hi / axis.lo <= 100) {  // few decades: 2 and 5 as well
        if (d * 2 < axis.hi) axis.ticks.push_back(d * 2);
        if (d * 5 < axis.hi) axis.ticks.push_back(d * 5);
      }
    }
    std::sort(axis.ticks.begin(), axis.ticks.end());
    return axis;
  }
  // Linear: start at 0 for non-negative data (rates, latencies, losses
  // read better against zero), leave 5% headroom.
  double lo = min >= 0 ? 0 : min;
  double hi = max;
  if (hi <= lo) hi = lo + (lo == 0 ? 1 : std::abs(lo) * 0.1);
  hi += (hi - lo) * 0.05;
  const double step = NiceStep(hi - lo, 6);
  axis.lo = std::floor(lo / step) * step;
  axis.hi = std::ceil(hi / step) * step;
  for (int i = 0;; ++i) {
    const double t = axis.lo + i * step;
    if (t > axis.hi + step * 1e-6 || i > 100) break;
    axis.ticks.push_back(std::abs(t) < step * 1e-9 ? 0.0 : t);
  }
  return axis;
}

std::string TickLabel(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.4g", v);
  return buf;
}

}  // namespace

uint32_t SeriesColor(int index) {
  static constexpr uint32_t kPalette[] = {0x1f77b4, 0xd62728, 0x2ca02c, 0xff7f0e,
                                          0x9467bd, 0x8c564b, 0xe377c2, 0x17becf};
  return kPalette[static_cast<size_t>(index) % (sizeof(kPalette) / sizeof(kPalette[0]))];
}

absl::StatusOr<std::string> EncodePng(const RgbImage& image) {
  if (image.width <= 0 || image.height <= 0 ||
      image.pixels.size() != static_cast<size_t>(image.width) * image.height * 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        "image: ", image.width, "x", image.height, " with ", image.pixels.size(),
        " bytes; expected width*height*3 bytes and both sides > 0"));
  }
  // Scanlines, each prefixed with filter type 0 (none).
  const size_t stride = static_cast<size_t>(image.width) * 3;
  std::string raw;
  raw.reserve((stride + 1) * image.height);
  for (int y = 0; y < image.height; ++y) {
    raw.push_back('\0');
    raw.append(reinterpret_cast<const char*>(&image.pixels[y * stride]), stride);
  }
  uLongf compressed_size = compressBound(raw.size());
  std::string compressed(compressed_size, '\0');
  if (compress2(reinterpret_cast<Bytef*>(compressed.data()), &compressed_size,
                reinterpret_cast<const Bytef*>(raw.data()), raw.size(),
                Z_BEST_COMPRESSION) != Z_OK) {
    return absl::InternalError("zlib compress2 failed");
  }
  compressed.resize(compressed_size);

  std::string png("\x89PNG\r\n\x1a\n", 8);
  auto put32 = [](std::string* out, uint32_t v) {
    out->push_back(static_cast<char>(v >> 24));
    out->push_back(static_cast<char>(v >> 16));
    out->push_back(static_cast<char>(v >> 8));
    out->push_back(static_cast<char>(v));
  };
  auto chunk = [&](const char type[5], const std::string& data) {
    put32(&png, static_cast<uint32_t>(data.size()));
    std::string body(type, 4);
    body += data;
    png += body;
    put32(&png, static_cast<uint32_t>(
                    crc32(0, reinterpret_cast<const Bytef*>(body.data()), body.size())));
  };
  std::string ihdr;
  put32(&ihdr, static_cast<uint32_t>(image.width));
  put32(&ihdr, static_cast<uint32_t>(image.height));
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // 8 bit, RGB, deflate, filter 0, no interlace
  chunk("IHDR", ihdr);
  chunk("IDAT", compressed);
  chunk("IEND", "");
  return png;
}

absl::StatusOr<RgbImage> RenderLineChart(const ChartOptions& options,
                                         const std::vector<ChartSeries>& series) {
  if (options.width < 200 || options.width > 8000 || options.height < 200 ||
      options.height > 8000) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chart size: ", options.width, "x", options.height,
        "; expected 200..8000 pixels each side"));
  }
  if (series.empty()) return absl::InvalidArgumentError("chart: no series");
  double xmin = std::numeric_limits<double>::infinity(), xmax = -xmin;
  double ymin = xmin, ymax = -xmin;
  for (const ChartSeries& s : series) {
    if (s.x.size() != s.y.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "chart series \"", s.name, "\": ", s.x.size(), " x values but ",
          s.y.size(), " y values"));
    }
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      if ((options.log_x && s.x[i] <= 0) || (options.log_y && s.y[i] <= 0)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "chart series \"", s.name, "\": point (", s.x[i], ", ", s.y[i],
            ") is not positive on a log axis"));
      }
      xmin = std::min(xmin, s.x[i]);
      xmax = std::max(xmax, s.x[i]);
      ymin = std::min(ymin, s.y[i]);
      ymax = std::max(ymax, s.y[i]);
    }
  }
  if (!std::isfinite(xmin)) {
    return absl::InvalidArgumentError("chart: no finite point in any series");
  }
  const Axis ax = MakeAxis(xmin, xmax, options.log_x);
  const Axis ay = MakeAxis(ymin, ymax, options.log_y);

  constexpr uint32_t kBlack = 0x000000, kGrid = 0xe0e0e0, kText = 0x202020;
  Canvas canvas(options.width, options.height);
  int widest_tick = 0;
  for (double t : ay.ticks) widest_tick = std::max(widest_tick, TextWidth(TickLabel(t)));
  const int left = 20 + widest_tick;
  const int right = options.width - 25;
  const int top = 30 + 2 * kCharHeight + 10;
  const int bottom = options.height - (3 * kCharHeight + 20);
  auto px = [&](double x) {
    return left + static_cast<int>(std::lround(ax.Fraction(x) * (right - left)));
  };
  auto py = [&](double y) {
    return bottom - static_cast<int>(std::lround(ay.Fraction(y) * (bottom - top)));
  };

  canvas.Text((options.width - TextWidth(options.title)) / 2, 10, options.title, kText);
  canvas.Text(left, top - kCharHeight - 8, options.y_label, kText);
  canvas.Text((left + right - TextWidth(options.x_label)) / 2,
              bottom + 2 * kCharHeight + 6, options.x_label, kText);
  for (double t : ax.ticks) {
    const int x = px(t);
    canvas.Line(x, top, x, bottom, kGrid);
    canvas.Line(x, bottom, x, bottom + 5, kBlack);
    const std::string label = TickLabel(t);
    canvas.Text(x - TextWidth(label) / 2, bottom + 9, label, kText);
  }
  for (double t : ay.ticks) {
    const int y = py(t);
    canvas.Line(left, y, right, y, kGrid);
    canvas.Line(left - 5, y, left, y, kBlack);
    const std::string label = TickLabel(t);
    canvas.Text(left - 8 - TextWidth(label), y - kCharHeight / 2, label, kText);
  }
  canvas.Line(left, top, left, bottom, kBlack, 2);
  canvas.Line(left, bottom, right, bottom, kBlack, 2);

  for (size_t si = 0; si < series.size(); ++si) {
    const ChartSeries& s = series[si];
    const uint32_t color = SeriesColor(static_cast<int>(si));
    bool have_previous = false;
    int prev_x = 0, prev_y = 0;
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) {
        have_previous = false;  // a gap in the line
        continue;
      }
      const int x = px(s.x[i]), y = py(s.y[i]);
      if (have_previous) canvas.Line(prev_x, prev_y, x, y, color, 2);
      canvas.Fill(x - 3, y - 3, x + 3, y + 3, color);
      prev_x = x;
      prev_y = y;
      have_previous = true;
    }
    // Legend, top right inside the plot.
    const int ly = top + 8 + static_cast<int>(si) * (kCharHeight + 6);
    int name_width = 0;
    for (const ChartSeries& t : series) name_width = std::max(name_width, TextWidth(t.name));
    const int lx = right - name_width - 40;
    canvas.Fill(lx, ly + 3, lx + 20, ly + kCharHeight - 4, color);
    canvas.Text(lx + 28, ly, s.name, kText);
  }
  return canvas.Take();
}

absl::Status WriteLineChartPng(const std::string& path, const ChartOptions& options,
                               const std::vector<ChartSeries>& series) {
  auto image = RenderLineChart(options, series);
  if (!image.ok()) return image.status();
  auto png = EncodePng(*image);
  if (!png.ok()) return png.status();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(png->data(), static_cast<std::streamsize>(png->size()));
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write chart ", path));
  return absl::OkStatus();
}

}  // namespace bitnet

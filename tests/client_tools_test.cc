// The network-free parts of bitnet-cli and bitnet-load (bitnet_client_tools):
// the PNG chart writer (decoded back with zlib), the row/training file
// readers, the latency histogram against exact order statistics, sweep
// specifications, the Prometheus reader and the flag parser.
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "client/chart.h"
#include "client/data_io.h"
#include "client/flag_args.h"
#include "client/load_stats.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

ABSL_FLAG(int, client_tools_test_int, 0, "flag for the parser test");
ABSL_FLAG(bool, client_tools_test_bool, false, "flag for the parser test");

namespace bitnet {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string TempPath(const std::string& name) {
  return (std::filesystem::path(::testing::TempDir()) / name).string();
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

// ------------------------------------------------------------------ PNG

uint32_t Be32(const std::string& s, size_t at) {
  return (static_cast<uint32_t>(static_cast<uint8_t>(s[at])) << 24) |
         (static_cast<uint32_t>(static_cast<uint8_t>(s[at + 1])) << 16) |
         (static_cast<uint32_t>(static_cast<uint8_t>(s[at + 2])) << 8) |
         static_cast<uint32_t>(static_cast<uint8_t>(s[at + 3]));
}

// A minimal PNG decoder for what EncodePng writes (RGB8, filter 0):
// checks the signature and every chunk CRC, inflates IDAT.
RgbImage DecodePng(const std::string& png) {
  RgbImage image;
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  std::string idat;
  size_t at = 8;
  bool saw_end = false;
  while (at + 12 <= png.size()) {
    const uint32_t length = Be32(png, at);
    const std::string type = png.substr(at + 4, 4);
    const std::string body = png.substr(at + 4, 4 + length);
    const uint32_t crc = Be32(png, at + 8 + length);
    EXPECT_EQ(crc, static_cast<uint32_t>(crc32(
                       0, reinterpret_cast<const Bytef*>(body.data()), body.size())))
        << "chunk " << type;
    if (type == "IHDR") {
      image.width = static_cast<int>(Be32(png, at + 8));
      image.height = static_cast<int>(Be32(png, at + 12));
      EXPECT_EQ(png[at + 16], 8);  // bit depth
      EXPECT_EQ(png[at + 17], 2);  // RGB
    } else if (type == "IDAT") {
      idat += png.substr(at + 8, length);
    } else if (type == "IEND") {
      saw_end = true;
    }
    at += 12 + length;
  }
  EXPECT_TRUE(saw_end);
  EXPECT_EQ(at, png.size());
  const size_t stride = static_cast<size_t>(image.width) * 3 + 1;
  std::string raw(stride * image.height, '\0');
  uLongf raw_size = raw.size();
  EXPECT_EQ(uncompress(reinterpret_cast<Bytef*>(raw.data()), &raw_size,
                       reinterpret_cast<const Bytef*>(idat.data()), idat.size()),
            Z_OK);
  EXPECT_EQ(raw_size, raw.size());
  for (int y = 0; y < image.height; ++y) {
    EXPECT_EQ(raw[y * stride], 0) << "filter byte of row " << y;
    image.pixels.insert(image.pixels.end(), raw.begin() + y * stride + 1,
                        raw.begin() + (y + 1) * stride);
  }
  return image;
}

TEST(PngTest, EncodesPixelsExactly) {
  RgbImage image;
  image.width = 7;
  image.height = 5;
  for (int i = 0; i < 7 * 5 * 3; ++i) image.pixels.push_back(static_cast<uint8_t>(i * 37));
  auto png = EncodePng(image);
  ASSERT_TRUE(png.ok()) << png.status();
  RgbImage back = DecodePng(*png);
  EXPECT_EQ(back.width, 7);
  EXPECT_EQ(back.height, 5);
  EXPECT_EQ(back.pixels, image.pixels);
  image.pixels.pop_back();
  EXPECT_EQ(EncodePng(image).status().code(), absl::StatusCode::kInvalidArgument);
}

int CountColor(const RgbImage& image, uint32_t rgb) {
  int n = 0;
  for (size_t i = 0; i + 2 < image.pixels.size(); i += 3) {
    const uint32_t c = (image.pixels[i] << 16) | (image.pixels[i + 1] << 8) | image.pixels[i + 2];
    n += c == rgb;
  }
  return n;
}

TEST(ChartTest, DrawsEverySeriesAndText) {
  ChartSeries rising{"rising", {1, 2, 3, 4}, {1, 4, 9, 16}};
  ChartSeries falling{"falling", {1, 2, 3, 4}, {16, 8, 4, 2}};
  ChartOptions options;
  options.title = "test chart";
  options.x_label = "x";
  options.y_label = "y";
  const std::string path = TempPath("chart_test.png");
  ASSERT_TRUE(WriteLineChartPng(path, options, {rising, falling}).ok());
  std::ifstream in(path, std::ios::binary);
  const std::string png((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  RgbImage image = DecodePng(png);
  EXPECT_EQ(image.width, options.width);
  EXPECT_EQ(image.height, options.height);
  // Lines and markers in both palette colors, black axes, dark text.
  EXPECT_GT(CountColor(image, SeriesColor(0)), 200);
  EXPECT_GT(CountColor(image, SeriesColor(1)), 200);
  EXPECT_GT(CountColor(image, 0x000000), options.height);
  EXPECT_GT(CountColor(image, 0x202020), 100);
  // The rising series ends top right, the falling one bottom right: the
  // last marker of each is in the right half, at opposite heights.
  auto centroid_y = [&](uint32_t color, int x_from) {
    double sum = 0;
    int n = 0;
    for (int y = 0; y < image.height; ++y) {
      for (int x = x_from; x < image.width; ++x) {
        const uint8_t* p = &image.pixels[(static_cast<size_t>(y) * image.width + x) * 3];
        if (((p[0] << 16) | (p[1] << 8) | p[2]) == static_cast<int>(color)) {
          sum += y;
          ++n;
        }
      }
    }
    return n ? sum / n : -1;
  };
  const int right_part = options.width * 3 / 4;
  EXPECT_LT(centroid_y(SeriesColor(0), right_part), centroid_y(SeriesColor(1), right_part));
}

TEST(ChartTest, LogAxesAndErrors) {
  ChartOptions options;
  options.log_y = true;
  EXPECT_TRUE(RenderLineChart(options, {{"s", {1, 2}, {0.1, 1000}}}).ok());
  auto bad = RenderLineChart(options, {{"s", {1, 2}, {0, 1}}});
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("log axis"));
  EXPECT_THAT(std::string(RenderLineChart({}, {{"s", {1, 2}, {1}}}).status().message()),
              HasSubstr("series \"s\""));
  EXPECT_FALSE(RenderLineChart({}, {}).ok());
  const double nan = std::nan("");
  EXPECT_FALSE(RenderLineChart({}, {{"s", {nan}, {nan}}}).ok());
  ChartOptions tiny;
  tiny.width = 10;
  EXPECT_THAT(std::string(RenderLineChart(tiny, {{"s", {1}, {1}}}).status().message()),
              HasSubstr("chart size"));
  // A single point and a flat series still render.
  EXPECT_TRUE(RenderLineChart({}, {{"s", {5}, {5}}}).ok());
  EXPECT_TRUE(RenderLineChart({}, {{"s", {1, 2, 3}, {0, 0, 0}}}).ok());
}

// ------------------------------------------------------------------ data files

TEST(DataIoTest, CsvAndJsonRows) {
  auto csv = ParseCsvRows("# comment\n1, 2,3\n\n4,5,6\n");
  ASSERT_TRUE(csv.ok()) << csv.status();
  EXPECT_EQ(csv->rows, 2);
  EXPECT_EQ(csv->cols, 3);
  EXPECT_THAT(csv->values, ElementsAre(1, 2, 3, 4, 5, 6));
  EXPECT_THAT(std::string(ParseCsvRows("1,2\n3\n").status().message()),
              HasSubstr("CSV line 2 has 1 values; expected 2"));
  EXPECT_THAT(std::string(ParseCsvRows("1,x\n").status().message()),
              HasSubstr("\"x\" is not a number"));
  auto json = ParseJsonRows("{\"rows\": [[1, 2], [3, 4.5]]}");
  ASSERT_TRUE(json.ok());
  EXPECT_THAT(json->values, ElementsAre(1, 2, 3, 4.5));
  EXPECT_TRUE(ParseJsonRows("[[1]]").ok());
  EXPECT_THAT(std::string(ParseJsonRows("[[1, \"a\"]]").status().message()),
              HasSubstr("is not a number"));
  EXPECT_THAT(std::string(ParseJsonRows("[[1], [1, 2]]").status().message()),
              HasSubstr("row 1 has 2 values"));
  EXPECT_FALSE(ParseJsonRows("{").ok());
}

TEST(DataIoTest, RowsFileErrorsNameTheFile) {
  const std::string path = TempPath("rows_empty.csv");
  WriteFile(path, "# nothing\n");
  EXPECT_THAT(std::string(ReadRowsFile(path).status().message()),
              HasSubstr("rows_empty.csv: no rows"));
  EXPECT_EQ(ReadRowsFile(TempPath("missing.csv")).status().code(),
            absl::StatusCode::kNotFound);
  const std::string json_path = TempPath("rows.json");
  WriteFile(json_path, "[[1,2],[3,4]]");
  auto rows = ReadRowsFile(json_path);
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ(rows->rows, 2);
}

TEST(DataIoTest, TrainingCsvAndJson) {
  TrainingFormat mse{TrainingLoss::kMse, 2, 1, "train"};
  const std::string csv = TempPath("train.csv");
  WriteFile(csv, "1,2,0.5\n3,4,1.5\n");
  auto data = ReadTrainingFile(csv, mse);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_THAT(data->inputs.values, ElementsAre(1, 2, 3, 4));
  EXPECT_THAT(data->targets.values, ElementsAre(0.5, 1.5));
  WriteFile(csv, "1,2,0.5\n3,4\n");
  EXPECT_THAT(std::string(ReadTrainingFile(csv, mse).status().message()),
              HasSubstr("CSV line 2 has 2 values; expected 2 inputs + 1 targets = 3"));

  TrainingFormat ce{TrainingLoss::kCrossEntropy, 2, 3, "train"};
  WriteFile(csv, "1,2,0\n3,4,2\n");
  data = ReadTrainingFile(csv, ce);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_THAT(data->labels, ElementsAre(0, 2));
  WriteFile(csv, "1,2,3\n");
  EXPECT_THAT(std::string(ReadTrainingFile(csv, ce).status().message()),
              HasSubstr("label of row 0 is 3; expected 0..2"));
  WriteFile(csv, "1,2,1.5\n");
  EXPECT_THAT(std::string(ReadTrainingFile(csv, ce).status().message()),
              HasSubstr("not an integer class"));

  const std::string json = TempPath("train.json");
  WriteFile(json, R"({"inputs": [[1, 2], [3, 4]], "labels": [1, 0]})");
  data = ReadTrainingFile(json, ce);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_THAT(data->labels, ElementsAre(1, 0));
  EXPECT_THAT(std::string(ReadTrainingFile(json, mse).status().message()),
              HasSubstr("needs \"targets\""));
  WriteFile(json, R"({"inputs": [[1, 2, 3]], "targets": [[1]]})");
  EXPECT_THAT(std::string(ReadTrainingFile(json, mse).status().message()),
              HasSubstr("inputs have 3 columns; the model expects 2"));
  WriteFile(json, R"({"inputs": [[1, 2]], "targets": [[1], [2]]})");
  EXPECT_THAT(std::string(ReadTrainingFile(json, mse).status().message()),
              HasSubstr("1 input rows but 2 target rows"));
}

TEST(DataIoTest, DigitsSafetensors) {
  const std::string path = std::string(BITNET_TEST_DATA_DIR) + "/digits.safetensors";
  TrainingFormat ce{TrainingLoss::kCrossEntropy, 64, 10, "train"};
  auto train = ReadTrainingFile(path, ce);
  ASSERT_TRUE(train.ok()) << train.status();
  EXPECT_EQ(train->inputs.rows, 1437);
  EXPECT_EQ(train->inputs.cols, 64);
  EXPECT_EQ(train->labels.size(), 1437u);
  for (int32_t label : train->labels) {
    EXPECT_GE(label, 0);
    EXPECT_LT(label, 10);
  }
  // Pixels are x = pixel / 16 with pixel in 0..16.
  for (float v : train->inputs.values) {
    EXPECT_GE(v, 0.0f);
    EXPECT_LE(v, 1.0f);
    EXPECT_EQ(v * 16, std::round(v * 16));
  }
  ce.split = "test";
  auto test = ReadTrainingFile(path, ce);
  ASSERT_TRUE(test.ok()) << test.status();
  EXPECT_EQ(test->inputs.rows, 360);
  ce.split = "valid";
  EXPECT_THAT(std::string(ReadTrainingFile(path, ce).status().message()),
              HasSubstr("no tensor \"valid.x\""));
  TrainingFormat mse{TrainingLoss::kMse, 64, 10, "train"};
  EXPECT_THAT(std::string(ReadTrainingFile(path, mse).status().message()),
              HasSubstr("no tensor \"train.targets\""));
  ce = {TrainingLoss::kCrossEntropy, 32, 10, "train"};
  EXPECT_THAT(std::string(ReadTrainingFile(path, ce).status().message()),
              HasSubstr("inputs have 64 columns; the model expects 32"));
}

TEST(DataIoTest, CorruptSafetensorsIsAnError) {
  const std::string path = TempPath("bad.safetensors");
  WriteFile(path, std::string("\x10\x00\x00\x00\x00\x00\x00\x00{}", 10));
  EXPECT_THAT(std::string(ReadTrainingFile(path, {}).status().message()),
              HasSubstr("header size 16 exceeds the file"));
  std::string header = R"({"train.x": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 32]}})";
  std::string bytes(8, '\0');
  const uint64_t size = header.size();
  std::memcpy(bytes.data(), &size, 8);
  WriteFile(path, bytes + header + std::string(8, '\0'));
  EXPECT_THAT(std::string(ReadTrainingFile(path, {}).status().message()),
              HasSubstr("tensor \"train.x\" data_offsets [0, 32)"));
  WriteFile(path, "abc");
  EXPECT_FALSE(ReadTrainingFile(path, {}).ok());
}

// ------------------------------------------------------------------ load stats

TEST(LatencyHistogramTest, PercentilesMatchExactOrderStatistics) {
  std::mt19937_64 rng(3);
  std::lognormal_distribution<double> latency(std::log(2e-3), 0.8);
  std::vector<double> values;
  LatencyHistogram histogram;
  for (int i = 0; i < 20000; ++i) {
    values.push_back(latency(rng));
    histogram.Record(values.back());
  }
  std::sort(values.begin(), values.end());
  EXPECT_EQ(histogram.count(), values.size());
  for (double q : {0.01, 0.5, 0.9, 0.95, 0.99, 0.999}) {
    const size_t rank = static_cast<size_t>(std::ceil(q * values.size()));
    const double exact = values[rank - 1];
    EXPECT_NEAR(histogram.Percentile(q), exact, exact * 0.006) << "q=" << q;
  }
  EXPECT_DOUBLE_EQ(histogram.max_seconds(), std::round(values.back() * 1e9) / 1e9);
  EXPECT_LE(histogram.Percentile(1.0), histogram.max_seconds());
  double mean = 0;
  for (double v : values) mean += v;
  EXPECT_NEAR(histogram.mean_seconds(), mean / values.size(), 1e-8);
  histogram.Reset();
  EXPECT_EQ(histogram.count(), 0u);
  EXPECT_EQ(histogram.Percentile(0.5), 0);
}

TEST(LatencyHistogramTest, ExtremesAreClamped) {
  LatencyHistogram histogram;
  histogram.Record(0);
  histogram.Record(-1);
  histogram.Record(5000);  // beyond the top bucket
  EXPECT_EQ(histogram.count(), 3u);
  EXPECT_DOUBLE_EQ(histogram.max_seconds(), 5000);
  EXPECT_LE(histogram.Percentile(0.5), 2e-6);
  EXPECT_GT(histogram.Percentile(1.0), 900);
}

TEST(SweepTest, Forms) {
  EXPECT_THAT(*ParseSweep("64", "concurrency", true), ElementsAre(64));
  EXPECT_THAT(*ParseSweep("1,4, 16", "concurrency", true), ElementsAre(1, 4, 16));
  EXPECT_THAT(*ParseSweep("1:1024:*4", "concurrency", true),
              ElementsAre(1, 4, 16, 64, 256, 1024));
  EXPECT_THAT(*ParseSweep("1:8:x2", "concurrency", true), ElementsAre(1, 2, 4, 8));
  EXPECT_THAT(*ParseSweep("100:400:100", "rate", false), ElementsAre(100, 200, 300, 400));
  EXPECT_THAT(*ParseSweep("0.5", "rate", false), ElementsAre(0.5));
}

TEST(SweepTest, ErrorsNameTheFlag) {
  for (const char* bad : {"", "0", "-1", "1.5", "a", "1:2", "4:1:1", "1:8:0", "1:8:*1",
                          "1:100000:1"}) {
    auto points = ParseSweep(bad, "concurrency", true);
    EXPECT_FALSE(points.ok()) << bad;
    EXPECT_THAT(std::string(points.status().message()), HasSubstr("--concurrency=")) << bad;
  }
  EXPECT_TRUE(ParseSweep("1.5", "rate", false).ok());
}

TEST(PrometheusTest, SumsMatchingSeries) {
  const std::string text =
      "# HELP bitnet_batch_rows Rows per batch\n"
      "# TYPE bitnet_batch_rows histogram\n"
      "bitnet_batch_rows_bucket{model=\"demo\",le=\"1\"} 3\n"
      "bitnet_batch_rows_sum{model=\"demo\"} 1234.5\n"
      "bitnet_batch_rows_count{model=\"demo\"} 10\n"
      "bitnet_batch_rows_sum{model=\"other\"} 7\n"
      "bitnet_batch_rows_count{model=\"other\"} 1\n"
      "bitnet_batch_rows_count_total{model=\"demo\"} 99\n";
  EXPECT_DOUBLE_EQ(*PrometheusValue(text, "bitnet_batch_rows_sum", "demo"), 1234.5);
  EXPECT_DOUBLE_EQ(*PrometheusValue(text, "bitnet_batch_rows_count", "demo"), 10);
  EXPECT_DOUBLE_EQ(*PrometheusValue(text, "bitnet_batch_rows_count", ""), 11);
  EXPECT_EQ(PrometheusValue(text, "bitnet_batch_rows_sum", "nope").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(PrometheusValue("up 1\n", "up", "").value(), 1);
}

TEST(HttpUrlTest, Splits) {
  auto split = SplitHttpUrl("http://127.0.0.1:9090/metrics");
  ASSERT_TRUE(split.ok());
  EXPECT_EQ(split->first, "http://127.0.0.1:9090");
  EXPECT_EQ(split->second, "/metrics");
  EXPECT_EQ(SplitHttpUrl("http://h:1")->second, "/metrics");
  EXPECT_FALSE(SplitHttpUrl("https://h/metrics").ok());
  EXPECT_FALSE(SplitHttpUrl("h:1/metrics").ok());
}

// ------------------------------------------------------------------ flags

TEST(FlagArgsTest, ParsesFlagsAndPositionals) {
  std::vector<std::string> args = {"prog", "--client_tools_test_int=5", "cmd",
                                   "--client_tools_test_bool", "-", "extra"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  std::vector<std::string> positional;
  std::string error;
  ASSERT_EQ(ParseFlagArgs(static_cast<int>(argv.size()), argv.data(), &positional, &error),
            FlagParse::kOk)
      << error;
  EXPECT_EQ(absl::GetFlag(FLAGS_client_tools_test_int), 5);
  EXPECT_TRUE(absl::GetFlag(FLAGS_client_tools_test_bool));
  EXPECT_THAT(positional, ElementsAre("cmd", "-", "extra"));

  auto parse = [&](std::vector<std::string> a) {
    a.insert(a.begin(), "prog");
    std::vector<char*> v;
    for (auto& s : a) v.push_back(s.data());
    positional.clear();
    error.clear();
    return ParseFlagArgs(static_cast<int>(v.size()), v.data(), &positional, &error);
  };
  EXPECT_EQ(parse({"--noclient_tools_test_bool"}), FlagParse::kOk);
  EXPECT_FALSE(absl::GetFlag(FLAGS_client_tools_test_bool));
  EXPECT_EQ(parse({"--client_tools_test_int", "7"}), FlagParse::kOk);
  EXPECT_EQ(absl::GetFlag(FLAGS_client_tools_test_int), 7);
  EXPECT_EQ(parse({"--no_such_flag_here"}), FlagParse::kError);
  EXPECT_THAT(error, HasSubstr("unknown flag --no_such_flag_here"));
  EXPECT_EQ(parse({"--client_tools_test_int=x"}), FlagParse::kError);
  EXPECT_THAT(error, HasSubstr("--client_tools_test_int=x"));
  EXPECT_EQ(parse({"--client_tools_test_int"}), FlagParse::kError);
  EXPECT_THAT(error, HasSubstr("needs a value"));
  EXPECT_EQ(parse({"--help"}), FlagParse::kHelp);
  EXPECT_THAT(FlagsHelp("tests/client_tools_test.cc"), HasSubstr("--client_tools_test_int"));
}

}  // namespace
}  // namespace bitnet

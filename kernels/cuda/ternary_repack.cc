// Interchange layout -> CUDA execution layouts (see ternary_device.cuh for
// the bit-level description and the decoders these mirror).
#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "kernels/cuda/ternary_cuda.h"
#include "kernels/ternary_format.h"

namespace bitnet {
namespace {

constexpr int64_t kTileRows = 16;
constexpr int64_t kWordsPerTile = 128;  // 32 lanes x 4 words

int64_t PaddedRows(int64_t rows) { return (rows + kCudaRowPad - 1) / kCudaRowPad * kCudaRowPad; }
int64_t KTiles(int64_t cols) { return (cols + kCudaColTile - 1) / kCudaColTile; }

// fp layout: (lane, word, slot) -> (row, col) within a 16 x 128 tile.
// Slot sl of word w: half = sl / 8, pair j = sl % 8, step = 2w + j / 4,
// register p = j % 4 (rows g, g+8, g, g+8; column offset 0 or 8).
void FpPosition(int lane, int word, int slot, int* row, int* col) {
  const int g = lane / 4;
  const int t = lane % 4;
  const int half = slot / 8;
  const int j = slot % 8;
  const int step = 2 * word + j / 4;
  const int p = j % 4;
  *row = g + 8 * (p & 1);
  *col = step * 16 + 2 * t + 8 * (p >> 1) + half;
}

// int8 layout: word = k-step of 32; slot sl -> register p and byte i:
// p = 0: slots 0,2,4,6 | p = 1: 1,3,5,7 | p = 2: 8,10,12,14 | p = 3: 9,11,13,15.
void Int8Position(int lane, int word, int slot, int* row, int* col) {
  const int g = lane / 4;
  const int t = lane % 4;
  const int p = (slot & 1) + 2 * (slot / 8);
  const int i = (slot % 8) / 2;
  *row = g + 8 * (p & 1);
  *col = word * 32 + 16 * (p >> 1) + 4 * t + i;
}

// int8 layout code: +1 -> 0, -1 -> 1, 0 -> 2 (what the PRMT tables expect).
uint32_t Int8Code(int q) { return q == 1 ? 0u : (q == -1 ? 1u : 2u); }
int Int8Q(uint32_t e) { return e == 0 ? 1 : (e == 1 ? -1 : 0); }

// Where each output bit pair comes from: entry (lane * 4 + word) * 16 + slot
// is row * 128 + col inside a 16 x 128 tile, from the layout's position
// function (the single statement of the layout; Lookup inverts the same one).
template <typename PositionFn>
std::array<uint16_t, kWordsPerTile * 16> TileSources(PositionFn position) {
  std::array<uint16_t, kWordsPerTile * 16> source{};
  for (int lane = 0; lane < 32; ++lane) {
    for (int word = 0; word < 4; ++word) {
      for (int slot = 0; slot < 16; ++slot) {
        int r = 0;
        int c = 0;
        position(lane, word, slot, &r, &c);
        source[(lane * 4 + word) * 16 + slot] = static_cast<uint16_t>(r * kCudaColTile + c);
      }
    }
  }
  return source;
}

// Tile by tile: the tile's interchange codes are unpacked a word at a time
// into a 16 x 128 scratch (code 1, q = 0, outside the matrix), then each
// output word gathers its 16 codes through TileSources. Model loading
// repacks every layer twice (fp and int8 layouts): the element-by-element
// version took 0.9 s for one 11008 x 4096 matrix.
template <typename PositionFn, typename EncodeFn>
std::vector<uint32_t> Repack(const PackedTernaryView& packed, PositionFn position,
                             EncodeFn encode) {
  const int64_t row_tiles = PaddedRows(packed.rows) / kTileRows;
  const int64_t k_tiles = KTiles(packed.cols);
  const int64_t words_per_row = WordsPerRow(packed.cols);
  constexpr int kWordsPerTileRow = kCudaColTile / kCodesPerWord;
  const std::array<uint16_t, kWordsPerTile* 16> source = TileSources(position);
  // Output bits by interchange code (code - 1 = q; code 3 never passes
  // ValidatePacked and is encoded as q = 2 would be).
  const uint32_t bits[4] = {encode(-1), encode(0), encode(1), encode(2)};
  std::vector<uint32_t> out(static_cast<size_t>(row_tiles * k_tiles * kWordsPerTile), 0u);
  std::array<uint8_t, kTileRows * kCudaColTile> codes;
  for (int64_t rt = 0; rt < row_tiles; ++rt) {
    for (int64_t kt = 0; kt < k_tiles; ++kt) {
      for (int r = 0; r < kTileRows; ++r) {
        const int64_t row = rt * kTileRows + r;
        for (int w = 0; w < kWordsPerTileRow; ++w) {
          const int64_t col0 = kt * kCudaColTile + w * kCodesPerWord;
          uint8_t* dst = codes.data() + r * kCudaColTile + w * kCodesPerWord;
          if (row >= packed.rows || col0 >= packed.cols) {
            std::fill(dst, dst + kCodesPerWord, uint8_t{1});
            continue;
          }
          const uint32_t word =
              static_cast<uint32_t>(packed.words[row * words_per_row + col0 / kCodesPerWord]);
          const int64_t valid = std::min<int64_t>(kCodesPerWord, packed.cols - col0);
          for (int s = 0; s < kCodesPerWord; ++s) {
            dst[s] = s < valid ? static_cast<uint8_t>((word >> (2 * s)) & 3u) : uint8_t{1};
          }
        }
      }
      uint32_t* tile = out.data() + (rt * k_tiles + kt) * kWordsPerTile;
      for (int i = 0; i < kWordsPerTile; ++i) {
        const uint16_t* from = source.data() + i * 16;
        uint32_t v = 0;
        for (int slot = 0; slot < 16; ++slot) v |= bits[codes[from[slot]]] << (2 * slot);
        tile[i] = v;
      }
    }
  }
  return out;
}

template <typename PositionFn>
int Lookup(const std::vector<uint32_t>& words, int64_t k_tiles, int64_t row, int64_t col,
           PositionFn position, bool int8) {
  const int64_t rt = row / kTileRows;
  const int64_t kt = col / kCudaColTile;
  const int r = static_cast<int>(row % kTileRows);
  const int c = static_cast<int>(col % kCudaColTile);
  // Inverse by search of TileSources: 512 positions per tile; fine for tests and docs.
  const std::array<uint16_t, kWordsPerTile* 16> source = TileSources(position);
  const uint16_t want = static_cast<uint16_t>(r * kCudaColTile + c);
  for (int i = 0; i < kWordsPerTile * 16; ++i) {
    if (source[i] != want) continue;
    const uint32_t w = words[static_cast<size_t>((rt * k_tiles + kt) * kWordsPerTile + i / 16)];
    const uint32_t e = (w >> (2 * (i % 16))) & 3u;
    return int8 ? Int8Q(e) : static_cast<int>(e) - 1;
  }
  return 99;  // unreachable for in-range positions
}

}  // namespace

std::vector<uint32_t> RepackTernaryForCudaFp(const PackedTernaryView& packed) {
  return Repack(packed, FpPosition, [](int q) { return static_cast<uint32_t>(q + 1); });
}

std::vector<uint32_t> RepackTernaryForCudaInt8(const PackedTernaryView& packed) {
  return Repack(packed, Int8Position, Int8Code);
}

int DecodeCudaFpLayout(const std::vector<uint32_t>& words, int64_t k_tiles, int64_t row,
                       int64_t col) {
  return Lookup(words, k_tiles, row, col, FpPosition, false);
}

int DecodeCudaInt8Layout(const std::vector<uint32_t>& words, int64_t k_tiles, int64_t row,
                         int64_t col) {
  return Lookup(words, k_tiles, row, col, Int8Position, true);
}

}  // namespace bitnet

// Interchange layout -> CUDA execution layouts (see ternary_device.cuh for
// the bit-level description and the decoders these mirror).
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

// q in {-1, 0, 1} of (row, col), 0 outside the matrix.
int QAt(const PackedTernaryView& packed, int64_t row, int64_t col) {
  if (row >= packed.rows || col >= packed.cols) return 0;
  return CodeAt(packed, row, col) - 1;
}

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

template <typename PositionFn, typename EncodeFn>
std::vector<uint32_t> Repack(const PackedTernaryView& packed, PositionFn position,
                             EncodeFn encode) {
  const int64_t row_tiles = PaddedRows(packed.rows) / kTileRows;
  const int64_t k_tiles = KTiles(packed.cols);
  std::vector<uint32_t> out(static_cast<size_t>(row_tiles * k_tiles * kWordsPerTile), 0u);
  for (int64_t rt = 0; rt < row_tiles; ++rt) {
    for (int64_t kt = 0; kt < k_tiles; ++kt) {
      uint32_t* tile = out.data() + (rt * k_tiles + kt) * kWordsPerTile;
      for (int lane = 0; lane < 32; ++lane) {
        for (int word = 0; word < 4; ++word) {
          uint32_t v = 0;
          for (int slot = 0; slot < 16; ++slot) {
            int r = 0;
            int c = 0;
            position(lane, word, slot, &r, &c);
            const int q = QAt(packed, rt * kTileRows + r, kt * kCudaColTile + c);
            v |= encode(q) << (2 * slot);
          }
          tile[lane * 4 + word] = v;
        }
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
  // Inverse by search: 512 positions per tile; fine for tests and docs.
  for (int lane = 0; lane < 32; ++lane) {
    for (int word = 0; word < 4; ++word) {
      for (int slot = 0; slot < 16; ++slot) {
        int pr = 0;
        int pc = 0;
        position(lane, word, slot, &pr, &pc);
        if (pr != r || pc != c) continue;
        const uint32_t w = words[static_cast<size_t>((rt * k_tiles + kt) * kWordsPerTile +
                                                     lane * 4 + word)];
        const uint32_t e = (w >> (2 * slot)) & 3u;
        return int8 ? Int8Q(e) : static_cast<int>(e) - 1;
      }
    }
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

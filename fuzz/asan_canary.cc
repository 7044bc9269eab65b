// Proves the ASan+UBSan build makes every class of report fatal
// (scripts/sanitizers.sh asan runs it before the tests): without
// arguments it must exit 0; with "overflow" (heap buffer overflow, ASan),
// "leak" (LeakSanitizer) or "ub" (signed overflow, UBSan, which only
// aborts under -fno-sanitize-recover) it must exit non-zero with a report.
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>

// Global so the leaked block is reachable from nowhere once cleared.
void* volatile leaked = nullptr;

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "clean";
  // volatile: keep the compiler from proving the bugs away at -O1.
  volatile int index = argc > 1 ? 4 : 0;
  volatile int big = argc > 1 ? INT_MAX : 0;
  if (std::strcmp(mode, "overflow") == 0) {
    int* p = new int[4];
    const int v = p[index];
    delete[] p;
    return v;
  }
  if (std::strcmp(mode, "leak") == 0) {
    leaked = std::malloc(64);
    leaked = nullptr;
    return 0;
  }
  if (std::strcmp(mode, "ub") == 0) {
    const int v = big + 1;
    std::printf("%d\n", v);
    return 0;
  }
  std::printf("asan canary: clean\n");
  return 0;
}

// Helpers shared by the fuzz targets (fuzz/*_fuzzer.cc).
//
// A fuzz target reports a finding by crashing: a sanitizer report, or
// FUZZ_CHECK below when an invariant the library documents does not hold
// (e.g. a file the reader accepted fails ValidateModel). A returned error
// Status is the expected outcome for most inputs and is never a finding.
#ifndef BITNET_FUZZ_FUZZ_UTIL_H_
#define BITNET_FUZZ_FUZZ_UTIL_H_

#include <cstdio>
#include <cstdlib>

// Not assert(): it must stay on in every build type, and name the invariant.
#define FUZZ_CHECK(cond, what)                                             \
  do {                                                                     \
    if (!(cond)) {                                                         \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s: %s\n", __FILE__, \
                   __LINE__, #cond, what);                                 \
      std::abort();                                                        \
    }                                                                      \
  } while (0)

#endif  // BITNET_FUZZ_FUZZ_UTIL_H_

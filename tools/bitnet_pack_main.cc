// bitnet-pack: converts float weights to packed ternary model files, writes
// the demo model, inspects model files. See tools/pack_cli.h for the usage.
#include <iostream>
#include <string>
#include <vector>

#include "tools/pack_cli.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  return bitnet::pack::RunBitnetPack(args, std::cout, std::cerr);
}

// bitnet-bench: one binary, one subcommand per benchmark family.
//   bitnet-bench cpu [--threads=N] [google benchmark flags]
//   bitnet-bench kernels [...]   (CUDA builds only)
//   bitnet-bench tensor-peak     (CUDA builds only; Hopper)
//   bitnet-bench train [--device=cuda|cpu|both] [--rows=256] ...
//   bitnet-bench serving [--device=cpu|cuda:0] [--demo_model=small|large] ...
//   bitnet-bench hostpath [--rows=32] [--in=4096] [--out=4096]
//   bitnet-bench routing [--instances=1,2] [--clients_per_instance=16,32,64] ...
// Each subcommand receives argv shifted by one (argv[0] is the subcommand).
#include <cstdio>
#include <cstring>

int RunCpuBenchmarks(int argc, char** argv);
int RunTrainBenchmarks(int argc, char** argv);
int RunServingBenchmarks(int argc, char** argv);
int RunHostPathBenchmarks(int argc, char** argv);
int RunRoutingBenchmarks(int argc, char** argv);
#ifdef BITNET_HAVE_CUDA
int RunKernelBenchmarks(int argc, char** argv);
int RunTensorPeak(int argc, char** argv);
#endif

namespace {

void PrintUsage(const char* program) {
  std::fprintf(stderr,
               "usage: %s <family> [options]\n"
               "  cpu       ternary CPU path against OpenBLAS sgemm (--threads=N)\n"
#ifdef BITNET_HAVE_CUDA
               "  kernels   CUDA kernels against cuBLAS fp16\n"
               "  tensor-peak  wgmma fp16/int8 rate and cuBLAS fp16/int8 at M = 2048 (Hopper)\n"
#else
               "  kernels   (not built: this binary has no CUDA support)\n"
#endif
               "  train     STE training steps/s (--device=cuda|cpu|both, --rows, "
               "--in, --hidden, --out, --act_quant, --optimizer, --steps)\n"
               "  serving   batched forward rows/s through the Backend (--device, "
               "--demo_model, --model_file, --batches=1,2,4,..., --io, --json)\n"
               "  hostpath  host CPU per request of the server's per-element work, "
               "before/after pinned fp16 batches (--rows, --in, --out)\n"
               "  routing   the server's routing and batching with simulated devices: "
               "p99 and batch rows of N instances vs 1 at the same load per device\n"
               "Options after the family are passed to it (Google Benchmark flags "
               "included, e.g. --benchmark_filter=int8).\n",
               program);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    PrintUsage(argv[0]);
    return argc < 2 ? 2 : 0;
  }
  if (std::strcmp(argv[1], "cpu") == 0) return RunCpuBenchmarks(argc - 1, argv + 1);
  if (std::strcmp(argv[1], "train") == 0) return RunTrainBenchmarks(argc - 1, argv + 1);
  if (std::strcmp(argv[1], "serving") == 0) return RunServingBenchmarks(argc - 1, argv + 1);
  if (std::strcmp(argv[1], "hostpath") == 0) return RunHostPathBenchmarks(argc - 1, argv + 1);
  if (std::strcmp(argv[1], "routing") == 0) return RunRoutingBenchmarks(argc - 1, argv + 1);
  if (std::strcmp(argv[1], "kernels") == 0) {
#ifdef BITNET_HAVE_CUDA
    return RunKernelBenchmarks(argc - 1, argv + 1);
#else
    std::fprintf(stderr, "bitnet-bench: 'kernels' needs a CUDA build (BITNET_CUDA=ON/AUTO with nvcc)\n");
    return 2;
#endif
  }
  if (std::strcmp(argv[1], "tensor-peak") == 0) {
#ifdef BITNET_HAVE_CUDA
    return RunTensorPeak(argc - 1, argv + 1);
#else
    std::fprintf(stderr, "bitnet-bench: 'tensor-peak' needs a CUDA build (BITNET_CUDA=ON/AUTO with nvcc)\n");
    return 2;
#endif
  }
  std::fprintf(stderr, "bitnet-bench: unknown benchmark family '%s'\n", argv[1]);
  PrintUsage(argv[0]);
  return 2;
}

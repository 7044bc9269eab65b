// Uses the installed bitnet::client: builds and decodes a request offline,
// and with an address argument runs one Infer against a live server.
//   consumer                  offline checks only
//   consumer 127.0.0.1:50051  plus Health and Infer on model "demo"
#include <cstdio>
#include <vector>

#include "client/client.h"

int main(int argc, char** argv) {
  const std::vector<float> row(64, 0.5f);
  auto request = bitnet::MakeInferRequest("demo", row, 64);
  if (!request.ok() || request->input().data().size() != 64 * 4 ||
      request->input().shape(0) != 1) {
    std::fprintf(stderr, "consumer: MakeInferRequest failed\n");
    return 1;
  }
  bitnet::v1::InferResponse echo;
  *echo.mutable_output() = request->input();
  auto decoded = bitnet::DecodeInferResponse(echo);
  if (!decoded.ok() || decoded->values != row) {
    std::fprintf(stderr, "consumer: DecodeInferResponse failed\n");
    return 1;
  }
  if (argc < 2) {
    std::printf("consumer: offline OK\n");
    return 0;
  }
  bitnet::ClientOptions options;
  options.address = argv[1];
  auto client = bitnet::Client::Create(options);
  if (!client.ok()) {
    std::fprintf(stderr, "consumer: %s\n", client.status().ToString().c_str());
    return 1;
  }
  auto health = (*client)->Health();
  auto out = (*client)->Infer("demo", row, 64);
  if (!health.ok() || !out.ok()) {
    std::fprintf(stderr, "consumer: health %s, infer %s\n",
                 health.status().ToString().c_str(), out.status().ToString().c_str());
    return 1;
  }
  std::printf("consumer: %s, infer OK: %lld x %lld from version %llu\n",
              health->c_str(), static_cast<long long>(out->rows),
              static_cast<long long>(out->cols),
              static_cast<unsigned long long>(out->version));
  return out->rows == 1 && out->cols > 0 ? 0 : 1;
}

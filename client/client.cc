#include "client/client.h"

#include <grpcpp/grpcpp.h>

#include <bit>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "bitnet/v1/admin.grpc.pb.h"
#include "bitnet/v1/inference.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace bitnet {
namespace {

static_assert(std::endian::native == std::endian::little,
              "tensors travel little-endian");

absl::StatusOr<std::string> ReadFile(const std::string& path,
                                     absl::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": cannot read ", path));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// fp32 -> binary16 / bfloat16, round to nearest even (NaN stays NaN).
// The client library depends only on the proto, not on server/model, so it
// carries its own small converters.
uint16_t ToBFloat16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

uint16_t ToHalf(float value) {
  uint32_t f;
  std::memcpy(&f, &value, 4);
  const uint32_t sign = (f >> 16) & 0x8000u;
  const uint32_t abs = f & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow/inf
  if (abs < 0x38800000u) {  // subnormal or zero in half
    // Scale to an integer number of 2^-24 units with round-half-even.
    float magnitude;
    std::memcpy(&magnitude, &abs, 4);
    const float scaled = magnitude * 16777216.0f;  // 2^24, exact
    float rounded = static_cast<float>(static_cast<int32_t>(scaled));
    const float frac = scaled - rounded;
    if (frac > 0.5f || (frac == 0.5f && (static_cast<int32_t>(rounded) & 1))) {
      rounded += 1.0f;
    }
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(rounded));
  }
  uint32_t mant = abs + 0xc8000000u;  // rebias exponent 127 -> 15 (<< 23)
  mant += 0x0fffu + ((mant >> 13) & 1u);
  return static_cast<uint16_t>(sign | (mant >> 13));
}

float FromHalf(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  float out;
  if (exp == 0) {
    out = static_cast<float>(mant) * (1.0f / 16777216.0f);
    uint32_t bits;
    std::memcpy(&bits, &out, 4);
    bits |= sign;
    std::memcpy(&out, &bits, 4);
    return out;
  }
  uint32_t bits = exp == 31 ? (sign | 0x7f800000u | (mant << 13))
                            : (sign | ((exp + 112) << 23) | (mant << 13));
  std::memcpy(&out, &bits, 4);
  return out;
}

float FromBFloat16(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

}  // namespace

struct Client::Stubs {
  std::unique_ptr<v1::Inference::Stub> inference;
  std::unique_ptr<v1::Admin::Stub> admin;
  std::unique_ptr<grpc::health::v1::Health::Stub> health;
};

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      status.error_message());
}

absl::StatusOr<v1::InferRequest> MakeInferRequest(
    std::string_view model, std::span<const float> rows, int64_t features,
    uint64_t version, v1::DType dtype) {
  if (features <= 0 || rows.size() % static_cast<size_t>(features) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rows: ", rows.size(), " values is not a multiple of ", features,
        " features"));
  }
  v1::InferRequest request;
  request.set_model(std::string(model));
  request.set_version(version);
  v1::Tensor* input = request.mutable_input();
  input->set_dtype(dtype);
  input->add_shape(static_cast<int64_t>(rows.size()) / features);
  input->add_shape(features);
  std::string* data = input->mutable_data();
  switch (dtype) {
    case v1::DTYPE_FP32:
      data->assign(reinterpret_cast<const char*>(rows.data()), rows.size() * 4);
      break;
    case v1::DTYPE_FP16:
    case v1::DTYPE_BF16:
      data->resize(rows.size() * 2);
      for (size_t i = 0; i < rows.size(); ++i) {
        const uint16_t bits =
            dtype == v1::DTYPE_FP16 ? ToHalf(rows[i]) : ToBFloat16(rows[i]);
        std::memcpy(data->data() + 2 * i, &bits, 2);
      }
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("dtype: ", static_cast<int>(dtype),
                       "; expected FP32, FP16 or BF16"));
  }
  return request;
}

absl::StatusOr<InferOutput> DecodeInferResponse(
    const v1::InferResponse& response) {
  const v1::Tensor& t = response.output();
  if (t.shape_size() != 2) {
    return absl::InternalError(absl::StrCat(
        "response output.shape has ", t.shape_size(), " dimensions; expected 2"));
  }
  InferOutput out;
  out.model = response.model();
  out.version = response.version();
  out.rows = t.shape(0);
  out.cols = t.shape(1);
  out.queue_seconds = response.timing().queue_seconds();
  out.server_seconds = response.timing().server_seconds();
  const size_t count = static_cast<size_t>(out.rows * out.cols);
  const size_t elem = t.dtype() == v1::DTYPE_FP32 ? 4 : 2;
  if (t.data().size() != count * elem) {
    return absl::InternalError(absl::StrCat("response output.data has ",
                                            t.data().size(), " bytes; expected ",
                                            count * elem));
  }
  out.values.resize(count);
  for (size_t i = 0; i < count; ++i) {
    if (t.dtype() == v1::DTYPE_FP32) {
      std::memcpy(&out.values[i], t.data().data() + 4 * i, 4);
    } else {
      uint16_t bits;
      std::memcpy(&bits, t.data().data() + 2 * i, 2);
      out.values[i] =
          t.dtype() == v1::DTYPE_FP16 ? FromHalf(bits) : FromBFloat16(bits);
    }
  }
  return out;
}

absl::StatusOr<std::unique_ptr<Client>> Client::Create(ClientOptions options) {
  if (options.address.empty()) {
    return absl::InvalidArgumentError("address: empty; expected host:port");
  }
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (options.tls_ca.empty() && options.tls_cert.empty()) {
    credentials = grpc::InsecureChannelCredentials();
  } else {
    grpc::SslCredentialsOptions ssl;
    if (!options.tls_ca.empty()) {
      auto ca = ReadFile(options.tls_ca, "tls_ca");
      if (!ca.ok()) return ca.status();
      ssl.pem_root_certs = *ca;
    }
    if (!options.tls_cert.empty()) {
      auto cert = ReadFile(options.tls_cert, "tls_cert");
      if (!cert.ok()) return cert.status();
      auto key = ReadFile(options.tls_key, "tls_key");
      if (!key.ok()) return key.status();
      ssl.pem_cert_chain = *cert;
      ssl.pem_private_key = *key;
    }
    credentials = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  auto channel = grpc::CreateCustomChannel(options.address, credentials, args);
  return std::unique_ptr<Client>(new Client(std::move(options), channel));
}

Client::Client(ClientOptions options, std::shared_ptr<grpc::Channel> channel)
    : options_(std::move(options)),
      channel_(std::move(channel)),
      stubs_(std::make_unique<Stubs>()) {
  stubs_->inference = v1::Inference::NewStub(channel_);
  stubs_->admin = v1::Admin::NewStub(channel_);
  stubs_->health = grpc::health::v1::Health::NewStub(channel_);
}

Client::~Client() = default;

namespace {

void PrepareContext(grpc::ClientContext* context, const ClientOptions& options,
                    bool admin) {
  context->set_deadline(absl::ToChronoTime(absl::Now() + options.timeout));
  if (admin && !options.admin_token.empty()) {
    context->AddMetadata("authorization",
                         absl::StrCat("Bearer ", options.admin_token));
  }
}

}  // namespace

absl::StatusOr<std::string> Client::Health(std::string_view service) {
  grpc::ClientContext context;
  PrepareContext(&context, options_, false);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(std::string(service));
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = stubs_->health->Check(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return grpc::health::v1::HealthCheckResponse::ServingStatus_Name(
      response.status());
}

absl::StatusOr<v1::ListModelsResponse> Client::ListModels() {
  grpc::ClientContext context;
  PrepareContext(&context, options_, false);
  v1::ListModelsResponse response;
  grpc::Status status =
      stubs_->inference->ListModels(&context, v1::ListModelsRequest(), &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::GetModelResponse> Client::GetModel(std::string_view name,
                                                      uint64_t version) {
  grpc::ClientContext context;
  PrepareContext(&context, options_, false);
  v1::GetModelRequest request;
  request.set_name(std::string(name));
  request.set_version(version);
  v1::GetModelResponse response;
  grpc::Status status = stubs_->inference->GetModel(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::InferResponse> Client::Infer(const v1::InferRequest& request) {
  grpc::ClientContext context;
  PrepareContext(&context, options_, false);
  v1::InferResponse response;
  grpc::Status status = stubs_->inference->Infer(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<InferOutput> Client::Infer(std::string_view model,
                                          std::span<const float> rows,
                                          int64_t features, uint64_t version) {
  auto request = MakeInferRequest(model, rows, features, version);
  if (!request.ok()) return request.status();
  auto response = Infer(*request);
  if (!response.ok()) return response.status();
  return DecodeInferResponse(*response);
}

absl::StatusOr<v1::LoadModelResponse> Client::LoadModel(std::string_view name,
                                                        std::string_view path) {
  grpc::ClientContext context;
  PrepareContext(&context, options_, true);
  v1::LoadModelRequest request;
  request.set_name(std::string(name));
  request.set_path(std::string(path));
  v1::LoadModelResponse response;
  grpc::Status status = stubs_->admin->LoadModel(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::UnloadModelResponse> Client::UnloadModel(
    std::string_view name, uint64_t version) {
  grpc::ClientContext context;
  PrepareContext(&context, options_, true);
  v1::UnloadModelRequest request;
  request.set_name(std::string(name));
  request.set_version(version);
  v1::UnloadModelResponse response;
  grpc::Status status = stubs_->admin->UnloadModel(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::GetStatsResponse> Client::GetStats() {
  grpc::ClientContext context;
  PrepareContext(&context, options_, true);
  v1::GetStatsResponse response;
  grpc::Status status =
      stubs_->admin->GetStats(&context, v1::GetStatsRequest(), &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

}  // namespace bitnet

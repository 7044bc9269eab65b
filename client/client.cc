#include "client/client.h"

#include <grpcpp/grpcpp.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
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

namespace {

bool IsIpv4Literal(absl::string_view host) {
  std::vector<absl::string_view> parts = absl::StrSplit(host, '.');
  if (parts.size() != 4) return false;
  for (absl::string_view p : parts) {
    int v;
    if (p.empty() || p.size() > 3 || !absl::SimpleAtoi(p, &v) || v < 0 || v > 255) {
      return false;
    }
    for (char c : p) {
      if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
    }
  }
  return true;
}

// "d+" in 1..65535.
bool IsPort(absl::string_view port) {
  int v;
  if (port.empty()) return false;
  for (char c : port) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
  }
  return absl::SimpleAtoi(port, &v) && v >= 1 && v <= 65535;
}

std::string SecondsJson(absl::Duration d) {
  // gRPC's service config takes durations as decimal seconds with an "s".
  return absl::StrFormat("%.9gs", absl::ToDoubleSeconds(d));
}

}  // namespace

absl::StatusOr<std::string> ChannelTarget(std::string_view address_view) {
  const absl::string_view address = absl::StripAsciiWhitespace(
      absl::string_view(address_view.data(), address_view.size()));
  if (address.empty()) {
    return absl::InvalidArgumentError("address: empty; expected host:port");
  }
  if (address.find(',') == absl::string_view::npos) return std::string(address);
  // A list: gRPC's ipv4:/ipv6: resolvers take literal addresses only, so a
  // host name cannot be balanced this way (a DNS name that resolves to
  // several addresses can: pass it alone, with load_balancing=round_robin).
  std::vector<std::string> v4, v6;
  for (absl::string_view entry : absl::StrSplit(address, ',')) {
    entry = absl::StripAsciiWhitespace(entry);
    if (entry.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "address: \"", address, "\" has an empty entry; expected ip:port,ip:port"));
    }
    if (entry[0] == '[') {  // [v6]:port
      const size_t close = entry.find("]:");
      if (close == absl::string_view::npos || !IsPort(entry.substr(close + 2))) {
        return absl::InvalidArgumentError(absl::StrCat(
            "address: entry \"", entry, "\"; expected [ipv6]:port"));
      }
      v6.emplace_back(entry);
      continue;
    }
    const size_t colon = entry.rfind(':');
    if (colon == absl::string_view::npos || !IsPort(entry.substr(colon + 1))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "address: entry \"", entry, "\" has no port; expected ip:port"));
    }
    absl::string_view host = entry.substr(0, colon);
    if (host == "localhost") host = "127.0.0.1";
    if (!IsIpv4Literal(host)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "address: entry \"", entry,
          "\": a list of addresses takes IP literals (ipv4:port or "
          "[ipv6]:port), not host names"));
    }
    v4.push_back(absl::StrCat(host, ":", entry.substr(colon + 1)));
  }
  if (!v4.empty() && !v6.empty()) {
    return absl::InvalidArgumentError(
        "address: a list mixes IPv4 and IPv6 entries; gRPC takes one family "
        "per target");
  }
  return v4.empty() ? absl::StrCat("ipv6:", absl::StrJoin(v6, ","))
                    : absl::StrCat("ipv4:", absl::StrJoin(v4, ","));
}

absl::StatusOr<std::string> ServiceConfigJson(const ClientOptions& options) {
  std::string policy = options.load_balancing;
  if (policy.empty() &&
      absl::string_view(options.address).find(',') != absl::string_view::npos) {
    policy = "round_robin";
  }
  if (!policy.empty() && policy != "round_robin" && policy != "pick_first") {
    return absl::InvalidArgumentError(absl::StrCat(
        "load_balancing: \"", policy, "\"; expected round_robin or pick_first"));
  }
  std::vector<std::string> parts;
  if (!policy.empty()) {
    parts.push_back(absl::StrCat("\"loadBalancingConfig\":[{\"", policy, "\":{}}]"));
  }
  const RetryOptions& r = options.retry;
  if (r.enabled) {
    if (r.max_attempts < 2 || r.max_attempts > 5) {
      return absl::InvalidArgumentError(absl::StrCat(
          "retry.max_attempts: ", r.max_attempts,
          "; expected 2..5 (gRPC caps attempts at 5; disable retries instead of 1)"));
    }
    if (r.initial_backoff <= absl::ZeroDuration()) {
      return absl::InvalidArgumentError(
          absl::StrCat("retry.initial_backoff: ",
                       absl::FormatDuration(r.initial_backoff), "; expected > 0"));
    }
    if (r.max_backoff < r.initial_backoff) {
      return absl::InvalidArgumentError(absl::StrCat(
          "retry.max_backoff: ", absl::FormatDuration(r.max_backoff),
          "; expected >= retry.initial_backoff (",
          absl::FormatDuration(r.initial_backoff), ")"));
    }
    if (!(r.backoff_multiplier >= 1.0) || !std::isfinite(r.backoff_multiplier)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "retry.backoff_multiplier: ", r.backoff_multiplier, "; expected >= 1"));
    }
    // Only idempotent methods: Infer is stateless, and a retried Infer whose
    // first attempt did reach the batcher only costs compute. InferStream,
    // FineTune, LoadModel, UnloadModel and SaveModel are left out on purpose
    // (replaying them could duplicate a version or a stream's items); health
    // checks are left out so that a probe reports the state it saw.
    const std::string names =
        "{\"service\":\"bitnet.v1.Inference\",\"method\":\"Infer\"},"
        "{\"service\":\"bitnet.v1.Inference\",\"method\":\"ListModels\"},"
        "{\"service\":\"bitnet.v1.Inference\",\"method\":\"GetModel\"},"
        "{\"service\":\"bitnet.v1.Admin\",\"method\":\"GetStats\"}";
    // CANCELLED too: a status the client did not cause by cancelling (gRPC
    // would not retry a call this client cancelled) comes from a server
    // shutting down, which with gRPC 1.51 cancels calls that raced its
    // GOAWAY before any service code ran (docs/reliability.md, findings).
    const std::string codes = r.retry_resource_exhausted
                                  ? "\"UNAVAILABLE\",\"CANCELLED\",\"RESOURCE_EXHAUSTED\""
                                  : "\"UNAVAILABLE\",\"CANCELLED\"";
    parts.push_back(absl::StrCat(
        "\"methodConfig\":[{\"name\":[", names, "],\"retryPolicy\":{",
        "\"maxAttempts\":", r.max_attempts, ",\"initialBackoff\":\"",
        SecondsJson(r.initial_backoff), "\",\"maxBackoff\":\"",
        SecondsJson(r.max_backoff), "\",\"backoffMultiplier\":",
        absl::StrFormat("%.6g", r.backoff_multiplier),
        ",\"retryableStatusCodes\":[", codes, "]}}]"));
  }
  return absl::StrCat("{", absl::StrJoin(parts, ","), "}");
}

absl::StatusOr<v1::Tensor> MakeTensor(std::span<const float> values,
                                      int64_t features, v1::DType dtype) {
  if (features <= 0 || values.size() % static_cast<size_t>(features) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rows: ", values.size(), " values is not a multiple of ", features,
        " features"));
  }
  v1::Tensor tensor;
  tensor.set_dtype(dtype);
  tensor.add_shape(static_cast<int64_t>(values.size()) / features);
  tensor.add_shape(features);
  std::string* data = tensor.mutable_data();
  switch (dtype) {
    case v1::DTYPE_FP32:
      data->assign(reinterpret_cast<const char*>(values.data()), values.size() * 4);
      break;
    case v1::DTYPE_FP16:
    case v1::DTYPE_BF16:
      data->resize(values.size() * 2);
      for (size_t i = 0; i < values.size(); ++i) {
        const uint16_t bits =
            dtype == v1::DTYPE_FP16 ? ToHalf(values[i]) : ToBFloat16(values[i]);
        std::memcpy(data->data() + 2 * i, &bits, 2);
      }
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("dtype: ", static_cast<int>(dtype),
                       "; expected FP32, FP16 or BF16"));
  }
  return tensor;
}

absl::StatusOr<std::vector<float>> DecodeTensor(const v1::Tensor& t) {
  if (t.shape_size() != 2 || t.shape(0) <= 0 || t.shape(1) <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor.shape: [", absl::StrJoin(t.shape(), ", "),
        "]; expected [rows, cols], both > 0"));
  }
  size_t elem = 0;
  switch (t.dtype()) {
    case v1::DTYPE_FP32: elem = 4; break;
    case v1::DTYPE_FP16:
    case v1::DTYPE_BF16: elem = 2; break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor.dtype: ", v1::DType_Name(t.dtype()), "; expected FP32, FP16 or BF16"));
  }
  const size_t count = static_cast<size_t>(t.shape(0)) * static_cast<size_t>(t.shape(1));
  if (t.data().size() != count * elem) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor.data: ", t.data().size(), " bytes; expected ", count * elem));
  }
  std::vector<float> values(count);
  for (size_t i = 0; i < count; ++i) {
    if (elem == 4) {
      std::memcpy(&values[i], t.data().data() + 4 * i, 4);
    } else {
      uint16_t bits;
      std::memcpy(&bits, t.data().data() + 2 * i, 2);
      values[i] = t.dtype() == v1::DTYPE_FP16 ? FromHalf(bits) : FromBFloat16(bits);
    }
  }
  return values;
}

absl::StatusOr<v1::InferRequest> MakeInferRequest(
    std::string_view model, std::span<const float> rows, int64_t features,
    uint64_t version, v1::DType dtype) {
  auto tensor = MakeTensor(rows, features, dtype);
  if (!tensor.ok()) return tensor.status();
  v1::InferRequest request;
  request.set_model(std::string(model));
  request.set_version(version);
  *request.mutable_input() = *std::move(tensor);
  return request;
}

absl::StatusOr<InferOutput> DecodeInferResponse(
    const v1::InferResponse& response) {
  auto values = DecodeTensor(response.output());
  if (!values.ok()) {
    // A response the server built wrong is the server's fault, not ours.
    return absl::InternalError(
        absl::StrCat("response output: ", values.status().message()));
  }
  InferOutput out;
  out.model = response.model();
  out.version = response.version();
  out.rows = response.output().shape(0);
  out.cols = response.output().shape(1);
  out.queue_seconds = response.timing().queue_seconds();
  out.server_seconds = response.timing().server_seconds();
  out.values = *std::move(values);
  return out;
}

absl::StatusOr<std::unique_ptr<Client>> Client::Create(ClientOptions options) {
  auto target = ChannelTarget(options.address);
  if (!target.ok()) return target.status();
  auto service_config = ServiceConfigJson(options);
  if (!service_config.ok()) return service_config.status();
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return absl::InvalidArgumentError(
        "tls_cert and tls_key: give both (mTLS client certificate) or neither");
  }
  if (options.max_message_bytes <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_message_bytes: ", options.max_message_bytes, "; expected > 0"));
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
  args.SetServiceConfigJSON(*service_config);
  // Our service config is the only one: never take one from DNS TXT records.
  args.SetInt("grpc.service_config_disable_resolution", 1);
  // gRPC only retries a call whose request still fits its retry buffer
  // (default 256 KiB, about 16 rows of the 4096-wide model); keep whole
  // requests so that large ones are retried too.
  args.SetInt("grpc.per_rpc_retry_buffer_size", options.max_message_bytes);
  if (!options.tls_server_name.empty()) {
    args.SetSslTargetNameOverride(options.tls_server_name);
  }
  if (options.own_connection) {
    // A private subchannel pool: channels with identical arguments would
    // otherwise share one TCP connection per address.
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  }
  auto channel = grpc::CreateCustomChannel(*target, credentials, args);
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
                    absl::Duration timeout, bool admin) {
  context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  context->set_wait_for_ready(options.wait_for_ready);
  if (admin && !options.admin_token.empty()) {
    context->AddMetadata("authorization",
                         absl::StrCat("Bearer ", options.admin_token));
  }
}

void PrepareContext(grpc::ClientContext* context, const ClientOptions& options,
                    bool admin) {
  PrepareContext(context, options, options.timeout, admin);
}

// Both stream kinds are the same sync bidi stream over a different pair of
// messages.
template <typename Interface, typename Request, typename Response>
class SyncBidiStream final : public Interface {
 public:
  SyncBidiStream(std::unique_ptr<grpc::ClientContext> context,
                 std::function<std::unique_ptr<grpc::ClientReaderWriter<Request, Response>>(
                     grpc::ClientContext*)> open)
      : context_(std::move(context)), stream_(open(context_.get())) {}
  ~SyncBidiStream() override {
    if (!finished_) {
      // Unfinished: cancel, then drain so that Finish() may be called
      // (gRPC requires Finish before the stream is destroyed).
      context_->TryCancel();
      Response ignored;
      while (stream_->Read(&ignored)) {
      }
      (void)stream_->Finish();
    }
  }
  bool Write(const Request& request) override { return stream_->Write(request); }
  bool WritesDone() override { return stream_->WritesDone(); }
  bool Read(Response* response) override { return stream_->Read(response); }
  absl::Status Finish() override {
    finished_ = true;
    return FromGrpcStatus(stream_->Finish());
  }
  void Cancel() override { context_->TryCancel(); }

 private:
  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<grpc::ClientReaderWriter<Request, Response>> stream_;
  bool finished_ = false;
};

// State of one asynchronous Infer, alive until its completion callback ran.
struct AsyncInferCall {
  grpc::ClientContext context;
  std::shared_ptr<const v1::InferRequest> request;
  v1::InferResponse response;
  Client::InferCallback done;
};

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

void Client::InferAsync(std::shared_ptr<const v1::InferRequest> request,
                        InferCallback done) {
  InferAsync(std::move(request), options_.timeout, std::move(done));
}

void Client::InferAsync(std::shared_ptr<const v1::InferRequest> request,
                        absl::Duration timeout, InferCallback done) {
  auto* call = new AsyncInferCall;
  PrepareContext(&call->context, options_, timeout, false);
  call->request = std::move(request);
  call->done = std::move(done);
  // gRPC's callback API: no thread per call; the lambda runs on a gRPC
  // thread when the call completes and owns `call` from then on.
  stubs_->inference->async()->Infer(
      &call->context, call->request.get(), &call->response,
      [call](grpc::Status status) {
        // Free the call's state (its ClientContext refers to the channel)
        // before running the user's callback: once that callback has run,
        // the caller may destroy the Client, and nothing of the library may
        // be touched after it (destroying the context then crashed gRPC's
        // callback thread, about 1 run in 4 of ClientAsyncTest).
        InferCallback done = std::move(call->done);
        absl::StatusOr<v1::InferResponse> result =
            status.ok() ? absl::StatusOr<v1::InferResponse>(std::move(call->response))
                        : absl::StatusOr<v1::InferResponse>(FromGrpcStatus(status));
        delete call;
        done(std::move(result));
      });
}

std::future<absl::StatusOr<v1::InferResponse>> Client::InferFuture(
    v1::InferRequest request) {
  auto promise =
      std::make_shared<std::promise<absl::StatusOr<v1::InferResponse>>>();
  auto future = promise->get_future();
  InferAsync(std::make_shared<const v1::InferRequest>(std::move(request)),
             [promise](absl::StatusOr<v1::InferResponse> response) {
               promise->set_value(std::move(response));
             });
  return future;
}

std::unique_ptr<InferStream> Client::OpenInferStream() {
  return OpenInferStream(options_.timeout);
}

std::unique_ptr<InferStream> Client::OpenInferStream(absl::Duration timeout) {
  auto context = std::make_unique<grpc::ClientContext>();
  PrepareContext(context.get(), options_, timeout, false);
  v1::Inference::Stub* stub = stubs_->inference.get();
  return std::make_unique<
      SyncBidiStream<InferStream, v1::InferRequest, v1::InferStreamResponse>>(
      std::move(context),
      [stub](grpc::ClientContext* c) { return stub->InferStream(c); });
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

absl::StatusOr<v1::SaveModelResponse> Client::SaveModel(
    const v1::SaveModelRequest& request) {
  grpc::ClientContext context;
  PrepareContext(&context, options_, true);
  v1::SaveModelResponse response;
  grpc::Status status = stubs_->admin->SaveModel(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

std::unique_ptr<FineTuneStream> Client::OpenFineTune(absl::Duration timeout) {
  auto context = std::make_unique<grpc::ClientContext>();
  PrepareContext(context.get(), options_, timeout, true);
  v1::Admin::Stub* stub = stubs_->admin.get();
  return std::make_unique<
      SyncBidiStream<FineTuneStream, v1::FineTuneRequest, v1::FineTuneResponse>>(
      std::move(context),
      [stub](grpc::ClientContext* c) { return stub->FineTune(c); });
}

}  // namespace bitnet

// The one place where an internal absl::Status becomes a grpc::Status at the
// edge of the server (Triton's GrpcStatusUtil::Create pattern). The numeric
// codes of absl::StatusCode and grpc::StatusCode are the same (both are
// google.rpc.Code); the message passes through unchanged, so messages that
// name the field and the expected value reach the client as written.
#ifndef BITNET_SERVER_SERVICE_GRPC_STATUS_H_
#define BITNET_SERVER_SERVICE_GRPC_STATUS_H_

#include <string_view>

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace bitnet {

grpc::Status ToGrpcStatus(const absl::Status& status);

// "OK", "INVALID_ARGUMENT", ...: the label value of bitnet_requests_total
// and grpc_server_handled_total.
std::string_view GrpcCodeName(grpc::StatusCode code);

}  // namespace bitnet

#endif  // BITNET_SERVER_SERVICE_GRPC_STATUS_H_

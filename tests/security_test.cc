// Security tests of bitnet-server (issue 8, docs/reliability.md "Security
// checklist"), against the real binary where flags and logs matter:
//   - TLS and mutual TLS for both services (Inference and Admin) with
//     certificates made by the openssl CLI at test time: plaintext clients,
//     clients trusting another CA, clients without a certificate or with one
//     from another CA are refused; the admin token is still required over
//     mTLS;
//   - the admin token comparison: behaviour of ConstantTimeEquals for every
//     kind of difference, and its time independent of where strings differ;
//   - model paths: LoadModel and SaveModel cannot leave the repository
//     (the cases server_service_test and server_integration_test do not
//     already cover: symlink chains, symlinked directories over RPC, a
//     SaveModel destination that is a symlink pointing out);
//   - size limits set by flags (--max_message_bytes, --max_request_rows);
//   - no secrets in logs: the admin token, a wrong token presented by a
//     client and the TLS private key never appear in the server's output,
//     including its start-up errors.
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bitnet/v1/admin.pb.h"
#include "fault_server_process.h"
#include "gmock/gmock.h"
#include "server/model/model_file.h"
#include "server/service/admin_auth.h"
#include "server_test_util.h"

namespace bitnet {
namespace {

using ::bitnet::testing::MakeClient;
using ::bitnet::testing::RandomRows;
using ::bitnet::testing::ReadWholeFile;
using ::bitnet::testing::Reference;
using ::bitnet::testing::ScratchDir;
using ::bitnet::testing::ServerBinary;
using ::bitnet::testing::ServerProcess;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kToken[] = "security-test-token-4f9c2a7e1b3d5c6f";
constexpr char kWrongToken[] = "security-test-token-WRONG-0000000000";
constexpr int64_t kIn = 64;

#define REQUIRE_SERVER_BINARY()                                        \
  if (ServerBinary().empty()) GTEST_SKIP() << "no bitnet-server binary"

// ---------------------------------------------------------------- tokens

TEST(ConstantTimeEqualsTest, EqualOnlyForIdenticalBytes) {
  const std::string token = "0123456789abcdef0123456789abcdef";
  EXPECT_TRUE(ConstantTimeEquals(token, token));
  EXPECT_TRUE(ConstantTimeEquals("", ""));
  // Every position, every bit: a one-bit difference anywhere is unequal.
  for (size_t i = 0; i < token.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string other = token;
      other[i] = static_cast<char>(other[i] ^ (1 << bit));
      EXPECT_FALSE(ConstantTimeEquals(token, other)) << i << ":" << bit;
      EXPECT_FALSE(ConstantTimeEquals(other, token)) << i << ":" << bit;
    }
  }
  // Prefixes, extensions and the empty string.
  for (size_t n = 0; n < token.size(); ++n) {
    EXPECT_FALSE(ConstantTimeEquals(token, token.substr(0, n))) << n;
    EXPECT_FALSE(ConstantTimeEquals(token.substr(0, n), token)) << n;
  }
  EXPECT_FALSE(ConstantTimeEquals(token, token + "x"));
  EXPECT_FALSE(ConstantTimeEquals(token, token + std::string(1, '\0')));
  // Bytes beyond ASCII and embedded NULs compare as bytes.
  const std::string binary("\x00\xff\x80\x7f\x00", 5);
  EXPECT_TRUE(ConstantTimeEquals(binary, std::string("\x00\xff\x80\x7f\x00", 5)));
  EXPECT_FALSE(ConstantTimeEquals(binary, std::string("\x00\xff\x80\x7f\x01", 5)));
  EXPECT_FALSE(ConstantTimeEquals(binary, std::string("\x00\xff\x80\x7f", 4)));
  // A presented value that is the token padded with what a shorter
  // comparison would read past the end (the implementation reads 0 there).
  EXPECT_FALSE(ConstantTimeEquals(std::string("ab\0", 3), "ab"));
}

// The time of a comparison does not depend on where the strings differ. A
// comparison that stops at the first difference (memcmp, operator==) is
// about 10^4-10^5 times faster for a 1 MiB string differing in its first
// byte than for an equal one; this one must stay within a factor of 5. The
// three cases are timed in turn, 31 rounds, and the fastest time of each
// is compared, so load on the machine affects them alike.
TEST(ConstantTimeEqualsTest, TimeDoesNotDependOnWhereTheStringsDiffer) {
  const std::string a(1 << 20, 'k');
  std::string first = a, last = a;
  first.front() = 'x';
  last.back() = 'x';
  const std::string* cases[3] = {&a, &first, &last};
  double best[3] = {1e9, 1e9, 1e9};
  for (int round = 0; round < 31; ++round) {
    for (int c = 0; c < 3; ++c) {
      const auto start = std::chrono::steady_clock::now();
      volatile bool equal = ConstantTimeEquals(a, *cases[c]);
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      (void)equal;
      best[c] = std::min(best[c], seconds);
    }
  }
  std::printf("ConstantTimeEquals on 1 MiB: equal %.3g s, first byte differs %.3g s, "
              "last byte differs %.3g s\n", best[0], best[1], best[2]);
  for (int c = 1; c < 3; ++c) {
    EXPECT_LT(best[0] / best[c], 5.0) << c;
    EXPECT_LT(best[c] / best[0], 5.0) << c;
  }
}

// CheckAdminToken compares whatever the header holds, so a malformed header
// costs the same as a wrong token; both are PERMISSION_DENIED without
// echoing what was sent.
TEST(ConstantTimeEqualsTest, CheckAdminTokenNeverEchoesThePresentedValue) {
  for (const std::string& header :
       {std::string("Bearer ") + kWrongToken, std::string(kWrongToken),
        std::string("Basic ") + kWrongToken, std::string("Bearer ")}) {
    const absl::Status s = CheckAdminToken(kToken, true, header);
    EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << header;
    EXPECT_THAT(std::string(s.message()), Not(HasSubstr(kWrongToken)));
    EXPECT_THAT(std::string(s.message()), Not(HasSubstr(kToken)));
  }
}

// ---------------------------------------------------------------- TLS

// Certificates made by the openssl CLI (P-256 keys: quick to generate): a CA, a server certificate for
// localhost/127.0.0.1 and a client certificate signed by it, and a second
// ("rogue") CA with its own client certificate.
class Pki {
 public:
  explicit Pki(const std::string& dir) : dir_(dir) {}
  bool Make() {
    auto cert = [&](const std::string& name, const std::string& cn, const std::string& ca,
                    const std::string& ext) {
      return absl::StrCat(
          "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ", name, ".key -out ", name,
          ".csr -subj /CN=", cn, " && ",
          ext.empty() ? "" : absl::StrCat("printf '", ext, "\\n' > ", name, ".ext && "),
          "openssl x509 -req -in ", name, ".csr -CA ", ca, ".pem -CAkey ", ca,
          ".key -CAcreateserial -out ", name, ".pem -days 1",
          ext.empty() ? "" : absl::StrCat(" -extfile ", name, ".ext"));
    };
    const std::string script = absl::StrCat(
        "cd ", dir_, " && ",
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
        "-keyout ca.key -out ca.pem -days 1 -subj /CN=bitnet-test-ca && ",
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
        "-keyout rogue_ca.key -out rogue_ca.pem -days 1 -subj /CN=rogue-ca && ",
        cert("server", "localhost", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1"), " && ",
        cert("client", "client", "ca", ""), " && ",
        cert("ops_client", "bitnet-ops", "ca", ""), " && ",
        cert("ops_san_client", "someone", "ca", "subjectAltName=URI:spiffe://corp/ops"), " && ",
        cert("rogue_client", "client", "rogue_ca", ""), " && ",
        cert("rogue_server", "localhost", "rogue_ca",
             "subjectAltName=DNS:localhost,IP:127.0.0.1"));
    return std::system(("(" + script + ") > " + dir_ + "/openssl.log 2>&1").c_str()) == 0;
  }
  std::string operator()(const std::string& file) const { return dir_ + "/" + file; }

 private:
  std::string dir_;
};

bool HaveOpenssl() { return std::system("openssl version > /dev/null 2>&1") == 0; }

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (ServerBinary().empty()) GTEST_SKIP() << "no bitnet-server binary";
    if (!HaveOpenssl()) GTEST_SKIP() << "openssl CLI not found";
    ASSERT_TRUE(pki_.Make()) << ReadWholeFile(dir_ / "openssl.log");
    std::filesystem::create_directories(dir_ / "repo");
    ASSERT_TRUE(WriteModelFile(MakeDemoModel(DemoModelSize::kSmall),
                               dir_ / "repo/small.safetensors").ok());
    std::ofstream(dir_ / "token") << kToken << "\n";
  }
  // `admin_names`: --admin_client_names (mutual only); empty: none. With
  // `token` false the server has no admin token.
  absl::StatusOr<std::unique_ptr<ServerProcess>> StartServer(bool mutual,
                                                             const std::string& admin_names = "",
                                                             bool token = true) {
    std::vector<std::string> args = {
        "--demo_model=small", "--device=cpu", "--cpu_threads=1",
        "--model_repository=" + dir_ / "repo",
        "--tls_cert=" + pki_("server.pem"), "--tls_key=" + pki_("server.key"),
        "--drain_grace_period=3s"};
    if (token) args.push_back("--admin_token_file=" + dir_ / "token");
    if (mutual) args.push_back("--tls_ca=" + pki_("ca.pem"));
    if (!admin_names.empty()) args.push_back("--admin_client_names=" + admin_names);
    return ServerProcess::Start(ServerBinary(), args,
                                dir_ / (mutual ? "mtls.log" : "tls.log"));
  }
  // ca: the CA file the client trusts ("" = plaintext); cert: the client
  // certificate's base name ("" = none).
  std::unique_ptr<Client> ClientFor(const ServerProcess& server, const std::string& ca,
                                    const std::string& cert, const std::string& token) {
    ClientOptions o;
    o.address = server.address();
    o.timeout = absl::Seconds(10);
    o.admin_token = token;
    if (!ca.empty()) o.tls_ca = pki_(ca);
    if (!cert.empty()) {
      o.tls_cert = pki_(cert + ".pem");
      o.tls_key = pki_(cert + ".key");
    }
    auto client = Client::Create(o);
    EXPECT_TRUE(client.ok()) << client.status();
    return *std::move(client);
  }
  // Both services answer: Health and Infer (Inference), GetStats, LoadModel
  // and UnloadModel (Admin).
  void ExpectBothServicesWork(Client& client) {
    auto health = client.Health("");
    ASSERT_TRUE(health.ok()) << health.status();
    EXPECT_EQ(*health, "SERVING");
    const std::vector<float> x = RandomRows(2, kIn, 3);
    auto r = client.Infer("demo", x, kIn);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->values, Reference(MakeDemoModel(DemoModelSize::kSmall), x));
    auto stats = client.GetStats();
    ASSERT_TRUE(stats.ok()) << stats.status();
    auto loaded = client.LoadModel("tls-loaded", "small.safetensors");
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_TRUE(client.UnloadModel("tls-loaded").ok());
  }
  // The connection is refused: every call of either service is UNAVAILABLE.
  void ExpectRefused(Client& client, const std::string& what) {
    EXPECT_EQ(client.Health("").status().code(), absl::StatusCode::kUnavailable) << what;
    EXPECT_EQ(client.Infer("demo", RandomRows(1, kIn, 1), kIn).status().code(),
              absl::StatusCode::kUnavailable) << what;
    EXPECT_EQ(client.GetStats().status().code(), absl::StatusCode::kUnavailable) << what;
  }

  ScratchDir dir_{"bitnet_security_tls"};
  Pki pki_{dir_.path()};
};

TEST_F(TlsTest, TlsServesBothServicesAndRefusesPlaintextAndUntrustedClients) {
  auto server = StartServer(/*mutual=*/false);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(testing::LogField((*server)->Log(), "server_started", "tls"), "on");
  ExpectBothServicesWork(*ClientFor(**server, "ca.pem", "", kToken));
  ExpectRefused(*ClientFor(**server, "", "", kToken), "plaintext client");
  ExpectRefused(*ClientFor(**server, "rogue_ca.pem", "", kToken),
                "client trusting another CA");
  // Without mTLS a client certificate is simply not asked for.
  ExpectBothServicesWork(*ClientFor(**server, "ca.pem", "client", kToken));
  // TLS does not replace the admin token.
  auto anonymous = ClientFor(**server, "ca.pem", "", "");
  EXPECT_EQ(anonymous->GetStats().status().code(), absl::StatusCode::kUnauthenticated);
}

TEST_F(TlsTest, MutualTlsRequiresAClientCertificateFromTheTrustedCa) {
  auto server = StartServer(/*mutual=*/true);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(testing::LogField((*server)->Log(), "server_started", "tls"), "mtls");
  ExpectBothServicesWork(*ClientFor(**server, "ca.pem", "client", kToken));
  ExpectRefused(*ClientFor(**server, "ca.pem", "", kToken), "client without a certificate");
  ExpectRefused(*ClientFor(**server, "ca.pem", "rogue_client", kToken),
                "client certificate from another CA");
  ExpectRefused(*ClientFor(**server, "", "", kToken), "plaintext client");
  // mTLS alone does not replace the admin token (ARCHITECTURE.md allows
  // "token (or mTLS)": that takes --admin_client_names, tested below).
  auto no_token = ClientFor(**server, "ca.pem", "client", "");
  EXPECT_EQ(no_token->GetStats().status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(no_token->Infer("demo", RandomRows(1, kIn, 1), kIn).ok());
}

TEST_F(TlsTest, AdminByClientCertificateIdentityWithoutAToken) {
  auto server = StartServer(/*mutual=*/true, "bitnet-ops,spiffe://corp/ops", /*token=*/false);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(testing::LogField((*server)->Log(), "server_started", "admin"), "certificate");
  // Named by its Common Name, or by a URI subject alternative name.
  ExpectBothServicesWork(*ClientFor(**server, "ca.pem", "ops_client", ""));
  ExpectBothServicesWork(*ClientFor(**server, "ca.pem", "ops_san_client", ""));
  // Another certificate of the same CA serves inference, not admin; a token
  // does not help on a server without one.
  auto other = ClientFor(**server, "ca.pem", "client", kToken);
  EXPECT_TRUE(other->Infer("demo", RandomRows(1, kIn, 1), kIn).ok());
  const absl::Status denied = other->GetStats().status();
  EXPECT_EQ(denied.code(), absl::StatusCode::kPermissionDenied) << denied;
  EXPECT_THAT(std::string(denied.message()), ::testing::HasSubstr("\"client\""));
  EXPECT_EQ(other->LoadModel("x", "small.safetensors").status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST_F(TlsTest, AdminClientNamesNeedMutualTls) {
  auto server = StartServer(/*mutual=*/false, "bitnet-ops");
  ASSERT_FALSE(server.ok());
  EXPECT_THAT(std::string(server.status().message()), ::testing::HasSubstr("--tls_ca"));
}

TEST_F(TlsTest, AClientRefusesAServerCertificateFromAnotherCa) {
  auto server = ServerProcess::Start(
      ServerBinary(),
      {"--demo_model=small", "--device=cpu", "--cpu_threads=1",
       "--tls_cert=" + pki_("rogue_server.pem"), "--tls_key=" + pki_("rogue_server.key")},
      dir_ / "rogue.log");
  ASSERT_TRUE(server.ok()) << server.status();
  ExpectRefused(*ClientFor(**server, "ca.pem", "", kToken), "server with a rogue certificate");
}

// ---------------------------------------------------------------- logs

// Every line of the key's base64 body; none may appear in a log.
std::vector<std::string> KeyLines(const std::string& pem) {
  std::vector<std::string> lines;
  for (absl::string_view line : absl::StrSplit(pem, '\n', absl::SkipEmpty())) {
    if (!absl::StartsWith(line, "-----") && line.size() >= 16) lines.emplace_back(line);
  }
  return lines;
}

void ExpectNoSecrets(const std::string& log, const std::string& key_pem, const std::string& what) {
  EXPECT_THAT(log, Not(HasSubstr(kToken))) << what;
  EXPECT_THAT(log, Not(HasSubstr(kWrongToken))) << what;
  EXPECT_THAT(log, Not(HasSubstr("PRIVATE KEY"))) << what;
  const std::vector<std::string> lines = KeyLines(key_pem);
  ASSERT_FALSE(lines.empty());
  for (const std::string& line : lines) {
    EXPECT_THAT(log, Not(HasSubstr(line))) << what << ": a line of the TLS key";
  }
}

TEST_F(TlsTest, NoSecretsInTheLogs) {
  const std::string key_pem = ReadWholeFile(pki_("server.key"));
  {
    auto server = StartServer(/*mutual=*/true);
    ASSERT_TRUE(server.ok()) << server.status();
    // Everything that logs: admin calls with the right and a wrong token,
    // failed admin calls, loads and unloads, a failed fine-tune, refused
    // handshakes, then the drain.
    auto admin = ClientFor(**server, "ca.pem", "client", kToken);
    ExpectBothServicesWork(*admin);
    auto wrong = ClientFor(**server, "ca.pem", "client", kWrongToken);
    EXPECT_EQ(wrong->GetStats().status().code(), absl::StatusCode::kPermissionDenied);
    EXPECT_EQ(wrong->LoadModel("x", "small.safetensors").status().code(),
              absl::StatusCode::kPermissionDenied);
    EXPECT_FALSE(admin->LoadModel("x", "../token").ok());
    EXPECT_FALSE(admin->LoadModel("x", "missing.safetensors").ok());
    v1::SaveModelRequest save;
    save.set_name("demo");
    save.set_path("saved.safetensors");
    EXPECT_FALSE(admin->SaveModel(save).ok());  // the embedded demo has no file
    std::unique_ptr<FineTuneStream> tune = wrong->OpenFineTune(absl::Seconds(10));
    v1::FineTuneRequest config;
    config.mutable_config()->set_model("demo");
    tune->Write(config);
    tune->WritesDone();
    v1::FineTuneResponse ignored;
    while (tune->Read(&ignored)) {
    }
    EXPECT_EQ(tune->Finish().code(), absl::StatusCode::kPermissionDenied);
    ExpectRefused(*ClientFor(**server, "ca.pem", "", kToken), "no client certificate");
    (*server)->Signal(SIGTERM);
    ASSERT_TRUE((*server)->WaitExit(absl::Seconds(30)).has_value());
    const std::string log = (*server)->Log();
    EXPECT_THAT(log, HasSubstr("event=admin_denied"));  // the log is not empty
    ExpectNoSecrets(log, key_pem, "serving and drain");
  }
  // Start-up errors: a token file too short to use, and the key and token
  // files swapped (the server must not print what it failed to parse).
  std::ofstream(dir_ / "short_token") << "short-secret\n";
  auto short_token = ServerProcess::Start(
      ServerBinary(), {"--demo_model=none", "--admin_token_file=" + dir_ / "short_token"},
      dir_ / "short.log", absl::Seconds(30));
  EXPECT_FALSE(short_token.ok());
  const std::string short_log = ReadWholeFile(dir_ / "short.log");
  EXPECT_THAT(short_log, HasSubstr("--admin_token_file"));
  EXPECT_THAT(short_log, Not(HasSubstr("short-secret")));
  auto swapped = ServerProcess::Start(
      ServerBinary(),
      {"--demo_model=none", "--tls_cert=" + pki_("server.pem"), "--tls_key=" + dir_ / "token",
       "--admin_token_file=" + pki_("server.key")},
      dir_ / "swapped.log", absl::Seconds(30));
  EXPECT_FALSE(swapped.ok());
  ExpectNoSecrets(ReadWholeFile(dir_ / "swapped.log"), key_pem, "swapped key and token");
}

// ---------------------------------------------------------------- paths

class PathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (ServerBinary().empty()) GTEST_SKIP() << "no bitnet-server binary";
    namespace fs = std::filesystem;
    repo_ = dir_ / "repo";
    outside_ = dir_ / "outside";
    fs::create_directories(repo_ + "/sub");
    fs::create_directories(outside_);
    const Model small = MakeDemoModel(DemoModelSize::kSmall);
    ASSERT_TRUE(WriteModelFile(small, repo_ + "/small.safetensors").ok());
    ASSERT_TRUE(WriteModelFile(small, outside_ + "/secret.safetensors").ok());
    outside_bytes_ = ReadWholeFile(outside_ + "/secret.safetensors");
    // A chain of links: link1 -> link2 -> outside file.
    fs::create_symlink(outside_ + "/secret.safetensors", repo_ + "/link2");
    fs::create_symlink(repo_ + "/link2", repo_ + "/link1.safetensors");
    // A relative link climbing out.
    fs::create_symlink("../outside/secret.safetensors", repo_ + "/relative.safetensors");
    // A directory link leading out, and one inside (allowed).
    fs::create_directory_symlink(outside_, repo_ + "/outdir");
    fs::create_directory_symlink(repo_ + "/sub", repo_ + "/indir");
    ASSERT_TRUE(WriteModelFile(small, repo_ + "/sub/inner.safetensors").ok());
    // A SaveModel destination that is a link to a file outside.
    fs::create_symlink(outside_ + "/secret.safetensors", repo_ + "/trap.safetensors");
    std::ofstream(dir_ / "token") << kToken;
    auto server = ServerProcess::Start(
        ServerBinary(),
        {"--models=small=small.safetensors", "--model_repository=" + repo_,
         "--admin_token_file=" + dir_ / "token", "--device=cpu", "--cpu_threads=1"},
        dir_ / "server.log");
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    admin_ = MakeClient(server_->port(), absl::Seconds(30), kToken);
  }
  absl::Status Save(const std::string& path, bool overwrite) {
    v1::SaveModelRequest request;
    request.set_name("small");
    request.set_path(path);
    request.set_overwrite(overwrite);
    return admin_->SaveModel(request).status();
  }

  ScratchDir dir_{"bitnet_security_paths"};
  std::string repo_, outside_, outside_bytes_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<Client> admin_;
};

TEST_F(PathTest, LoadModelAndSaveModelCannotLeaveTheRepository) {
  struct Case {
    std::string path;
    absl::StatusCode code;
  };
  for (const Case& c : std::vector<Case>{
           {"link1.safetensors", absl::StatusCode::kPermissionDenied},
           {"relative.safetensors", absl::StatusCode::kPermissionDenied},
           {"outdir/secret.safetensors", absl::StatusCode::kPermissionDenied},
           {"sub/../../outside/secret.safetensors", absl::StatusCode::kPermissionDenied},
           {"./../outside/secret.safetensors", absl::StatusCode::kPermissionDenied},
           {outside_ + "/secret.safetensors", absl::StatusCode::kPermissionDenied},
           {"%2e%2e/outside/secret.safetensors", absl::StatusCode::kNotFound},  // a name
       }) {
    auto r = admin_->LoadModel("stolen", c.path);
    EXPECT_EQ(r.status().code(), c.code) << c.path << ": " << r.status();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("path"));
  }
  // Links that stay inside are fine.
  EXPECT_TRUE(admin_->LoadModel("inner", "indir/inner.safetensors").ok());

  // SaveModel: out through "..", an absolute path, a directory link, and a
  // destination that is itself a link to an outside file (with overwrite).
  for (const std::string& path :
       {std::string("../outside/x.safetensors"), outside_ + "/x.safetensors",
        std::string("outdir/x.safetensors"), std::string("trap.safetensors")}) {
    const absl::Status s = Save(path, /*overwrite=*/true);
    EXPECT_THAT(s.code(), ::testing::AnyOf(absl::StatusCode::kPermissionDenied,
                                           absl::StatusCode::kInvalidArgument))
        << path << ": " << s;
  }
  EXPECT_EQ(ReadWholeFile(outside_ + "/secret.safetensors"), outside_bytes_);
  EXPECT_FALSE(std::filesystem::exists(outside_ + "/x.safetensors"));
  EXPECT_TRUE(std::filesystem::is_symlink(repo_ + "/trap.safetensors"));
  // And inside it works.
  EXPECT_TRUE(Save("sub/copy.safetensors", false).ok());
  EXPECT_TRUE(ReadModelFile(repo_ + "/sub/copy.safetensors").ok());
}

// ---------------------------------------------------------------- limits

TEST(SizeLimitTest, MessageAndRowLimitsFromFlags) {
  REQUIRE_SERVER_BINARY();
  ScratchDir dir("bitnet_security_limits");
  auto server = ServerProcess::Start(
      ServerBinary(),
      {"--demo_model=small", "--device=cpu", "--cpu_threads=1", "--max_message_bytes=65536",
       "--max_request_rows=64", "--max_batch_rows=128", "--preferred_batch_rows=64"},
      dir / "server.log");
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = MakeClient((*server)->port());
  // 64 rows x 64 fp32 = 16 KiB: fine; 65 rows: too many rows; 300 rows
  // (75 KiB) is over the message limit before any field is looked at.
  EXPECT_TRUE(client->Infer("demo", RandomRows(64, kIn, 1), kIn).ok());
  auto rows = client->Infer("demo", RandomRows(65, kIn, 1), kIn);
  EXPECT_EQ(rows.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(rows.status().message()), HasSubstr("expected at most 64"));
  auto big = client->Infer("demo", RandomRows(300, kIn, 1), kIn);
  EXPECT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(big.status().message()), HasSubstr("65536"));
  EXPECT_TRUE(client->Infer("demo", RandomRows(8, kIn, 1), kIn).ok());
}

}  // namespace
}  // namespace bitnet

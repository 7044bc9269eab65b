#!/usr/bin/env python3
"""Python client test for bitnet-server (run by CTest as server_python_client).

What it does, with nothing but the Python standard library, grpcio and
protobuf (Debian: python3-grpcio, python3-protobuf):
  1. generates Python stubs from proto/ into a temp dir at test time
     (`python3 -m grpc_tools.protoc` when available, else `protoc
     --python_out` + Debian's grpc_python_plugin);
  2. has bitnet-server write the small demo model to a file
     (--write_demo_model) and starts bitnet-server on free ports with it;
  3. calls Health, ListModels, GetModel, Infer (fp32, fp16 output), an
     invalid Infer and InferStream, and compares every output element with
     an oracle computed here: a pure-Python reading of the safetensors file
     (struct + json) and the int8 ternary forward of ARCHITECTURE.md with
     float32 arithmetic emulated exactly, so the comparison is bit-exact;
  4. scrapes /metrics, sends SIGTERM and checks the drain and the exit code.

Environment: BITNET_SERVER (path of bitnet-server, required), BITNET_CLI
(path of bitnet-cli: also checks the CLI against the same server),
BITNET_PROTO_DIR (default: ../../proto next to this file).
Exit codes: 0 pass, 1 fail, 77 skipped (grpc/protobuf or a proto compiler
missing). The last line printed is a summary.
"""

import json
import math
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

SKIP = 77
HERE = os.path.dirname(os.path.abspath(__file__))


class Checker:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, condition, what):
        if condition:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL: {what}", flush=True)
        return condition


# ---------------------------------------------------------------- stubs


def generate_stubs(proto_dir, out_dir):
    """Compiles the protos into out_dir. Returns an error string or None.

    grpc/health/v1/health.proto is compiled under another directory name
    (bitnet_health/) so that its generated package does not shadow the real
    `grpc` Python package; the proto package (grpc.health.v1) and hence the
    service name on the wire are unchanged.
    """
    src = os.path.join(out_dir, "src")
    os.makedirs(os.path.join(src, "bitnet", "v1"))
    os.makedirs(os.path.join(src, "bitnet_health"))
    for name in ("inference", "admin"):
        shutil.copy(os.path.join(proto_dir, "bitnet", "v1", f"{name}.proto"),
                    os.path.join(src, "bitnet", "v1"))
    shutil.copy(os.path.join(proto_dir, "grpc", "health", "v1", "health.proto"),
                os.path.join(src, "bitnet_health"))
    files = ["bitnet/v1/inference.proto", "bitnet/v1/admin.proto",
             "bitnet_health/health.proto"]
    try:
        import grpc_tools.protoc  # noqa: F401
        cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{src}",
               f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"] + files
    except ImportError:
        protoc = shutil.which("protoc")
        plugin = shutil.which("grpc_python_plugin")
        if not protoc or not plugin:
            return "neither grpc_tools nor protoc + grpc_python_plugin found"
        cmd = [protoc, f"-I{src}", f"--python_out={out_dir}",
               f"--grpc_python_out={out_dir}",
               f"--plugin=protoc-gen-grpc_python={plugin}"] + files
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        return f"{' '.join(cmd)} failed: {result.stderr}"
    return None


# ---------------------------------------------------------------- oracle


def f32(x):
    """Rounds a Python float (double) to the nearest float32."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


F32_ABS_MAX_FLOOR = f32(1e-5)


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    base = 8 + header_len
    metadata = header.pop("__metadata__", {})
    tensors = {}
    formats = {"F32": "f", "I32": "i"}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        fmt = formats[info["dtype"]]
        count = (end - begin) // 4
        tensors[name] = (info["shape"],
                         struct.unpack(f"<{count}{fmt}", data[base + begin:base + end]))
    return metadata, tensors


class Layer:
    def __init__(self, spec, tensors, index):
        self.k = spec["in_features"]
        self.n = spec["out_features"]
        self.activation = spec["activation"]
        self.act_quant = spec["act_quant"]
        _, words = tensors[f"layers.{index}.weight.packed"]
        _, scales = tensors[f"layers.{index}.weight.scale"]
        self.scales = list(scales) if len(scales) == self.n else [scales[0]] * self.n
        bias_name = f"layers.{index}.bias"
        self.bias = list(tensors[bias_name][1]) if bias_name in tensors else [0.0] * self.n
        words_per_row = (self.k + 15) // 16
        # q[j][k] = code - 1; element k lives in word k // 16 at bits 2 * (k % 16).
        self.q = []
        for j in range(self.n):
            row = []
            for k in range(self.k):
                word = words[j * words_per_row + k // 16] & 0xFFFFFFFF
                row.append(((word >> (2 * (k % 16))) & 3) - 1)
            self.q.append(row)

    def activate(self, v):
        if self.activation == "identity":
            return v
        if self.activation == "relu":
            return v if v > 0 else 0.0
        raise NotImplementedError(f"activation {self.activation} not in the oracle")

    def forward_row(self, x):
        out = []
        if self.act_quant == "int8":
            # s = 127 / max(|x|max, 1e-5); xq = clamp(round_half_even(x * s))
            # as float32 operations; integer accumulation; epilogue
            # float(acc) * scale / s + bias, each step rounded to float32.
            abs_max = max(abs(v) for v in x)
            s = f32(127.0 / max(abs_max, F32_ABS_MAX_FLOOR))
            xq = [max(-128, min(127, round(f32(v * s)))) for v in x]
            for j in range(self.n):
                acc = sum(a * b for a, b in zip(xq, self.q[j]))
                v = f32(f32(f32(float(acc)) * self.scales[j]) / s)
                out.append(f32(self.activate(f32(v + self.bias[j]))))
        else:
            # fp32 mode of the oracle: double accumulation, one rounding.
            for j in range(self.n):
                acc = math.fsum(a * b for a, b in zip(x, self.q[j]))
                out.append(f32(self.activate(f32(acc * self.scales[j] + self.bias[j]))))
        return out


def load_oracle(path):
    metadata, tensors = read_safetensors(path)
    specs = json.loads(metadata["layers"])
    return [Layer(spec, tensors, i) for i, spec in enumerate(specs)]


def oracle_forward(layers, rows):
    out = []
    for x in rows:
        for layer in layers:
            x = layer.forward_row(x)
        out.append(x)
    return out


# ---------------------------------------------------------------- server


def start_server(server, model_path, log_path):
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [server, "--port=0", "--metrics_port=0", "--address=127.0.0.1",
         "--metrics_address=127.0.0.1", "--device=cpu", "--cpu_threads=2",
         f"--models=demo={model_path}", "--drain_grace_period=10s"],
        stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    ports = None
    while time.time() < deadline and proc.poll() is None:
        with open(log_path) as f:
            text = f.read()
        m = re.search(r"event=server_started .*? port=(\d+) metrics_port=(\d+)", text)
        if m and "event=serving" in text:
            ports = int(m.group(1)), int(m.group(2))
            break
        time.sleep(0.05)
    return proc, ports


def check_cli(c, cli, port, rows, want, tmp):
    """bitnet-cli: commands, input formats, output formats and exit codes."""
    address = f"--address=127.0.0.1:{port}"

    def run(*args, stdin=None):
        return subprocess.run([cli, address, "--timeout=20s", *args], input=stdin,
                              capture_output=True, text=True)

    r = run("health")
    c.check(r.returncode == 0 and r.stdout.strip() == "SERVING", f"cli health: {r}")
    r = run("models")
    c.check(r.returncode == 0 and "\ndemo\t1\t1\tcpu\t" in r.stdout, f"cli models: {r}")
    csv_path = os.path.join(tmp, "rows.csv")
    with open(csv_path, "w") as f:
        f.write("# two rows\n")
        for row in rows[:2]:
            f.write(",".join(repr(v) for v in row) + "\n")
    r = run("infer", "--model=demo", f"--input={csv_path}", "--output=csv")
    got = [[f32(float(v)) for v in line.split(",")] for line in r.stdout.split()]
    c.check(r.returncode == 0 and got == want[:2], f"cli infer CSV -> CSV equals the oracle: {r.stderr}")
    r = run("infer", "--model=demo", "--input=-", "--output=json",
            stdin=json.dumps({"rows": rows[2:4]}))
    ok = r.returncode == 0 and json.loads(r.stdout)["outputs"] == want[2:4]
    c.check(ok, f"cli infer JSON stdin -> JSON equals the oracle: {r.stderr}")
    r = run("infer", "--model=demo", "--random=3", "--output=json")
    c.check(r.returncode == 0 and json.loads(r.stdout)["shape"] == [3, len(want[0])],
            f"cli infer --random: {r.stderr}")
    r = run("infer", "--model=nope", "--random=1")
    c.check(r.returncode == 1 and "NOT_FOUND" in r.stderr, f"cli RPC error exits 1: {r}")
    r = run("infer", "--model=demo", "--input=-", stdin="1,2,3\n")
    c.check(r.returncode == 1 and "INVALID_ARGUMENT" in r.stderr and "input.shape" in r.stderr,
            f"cli wrong width exits 1 with the server's message: {r}")
    for args in (["frobnicate"], ["infer"], ["infer", "--model=demo"], ["--no_such_flag", "health"],
                 ["infer", "--model=demo", "--random=x"]):
        r = run(*args)
        c.check(r.returncode == 2, f"cli usage error {args} exits 2, got {r.returncode}")


def main():
    server = os.environ.get("BITNET_SERVER")
    proto_dir = os.environ.get("BITNET_PROTO_DIR",
                               os.path.join(HERE, "..", "..", "proto"))
    if not server or not os.path.exists(server):
        print(f"FAIL: BITNET_SERVER={server!r} is not a bitnet-server binary")
        return 1
    try:
        import grpc  # noqa: F401
        import google.protobuf  # noqa: F401
    except ImportError as e:
        print(f"SKIP: {e} (install python3-grpcio and python3-protobuf)")
        return SKIP

    c = Checker()
    tmp = tempfile.mkdtemp(prefix="bitnet_pytest_")
    proc = None
    try:
        error = generate_stubs(proto_dir, tmp)
        if error:
            print(f"SKIP: cannot generate stubs: {error}")
            return SKIP
        sys.path.insert(0, tmp)
        import grpc
        from bitnet.v1 import inference_pb2, inference_pb2_grpc
        from bitnet_health import health_pb2, health_pb2_grpc

        model_path = os.path.join(tmp, "small.safetensors")
        result = subprocess.run([server, "--demo_model=small",
                                 f"--write_demo_model={model_path}"],
                                capture_output=True, text=True)
        if not c.check(result.returncode == 0 and os.path.exists(model_path),
                       f"bitnet-server --write_demo_model: {result.stderr}"):
            return 1
        layers = load_oracle(model_path)
        features = layers[0].k

        log_path = os.path.join(tmp, "server.log")
        proc, ports = start_server(server, model_path, log_path)
        if not c.check(ports is not None, "server started and logged its ports"):
            print(open(log_path).read())
            return 1
        port, metrics_port = ports
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=30)
        inference = inference_pb2_grpc.InferenceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)

        # Health: overall and per model.
        for service in ("", "demo"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service),
                                  timeout=10).status
            c.check(status == health_pb2.HealthCheckResponse.SERVING,
                    f"health({service!r}) is SERVING, got {status}")

        models = inference.ListModels(inference_pb2.ListModelsRequest(), timeout=10)
        c.check([m.name for m in models.models] == ["demo"], "ListModels lists demo")
        info = inference.GetModel(inference_pb2.GetModelRequest(name="demo"), timeout=10)
        c.check(list(info.input_shape) == [-1, features] and
                len(info.layers) == len(layers), "GetModel shapes and layers")

        # Infer: fp32 in, fp32 out; then fp16 out of the same rows.
        rng = random.Random(1234)
        rows = [[f32(rng.gauss(0, 1)) for _ in range(features)] for _ in range(6)]
        want = oracle_forward(layers, rows)
        tensor = inference_pb2.Tensor(
            dtype=inference_pb2.DTYPE_FP32, shape=[len(rows), features],
            data=struct.pack(f"<{len(rows) * features}f", *[v for r in rows for v in r]))
        response = inference.Infer(inference_pb2.InferRequest(
            model="demo", input=tensor, request_id="py-1"), timeout=30)
        out_n = layers[-1].n
        c.check(list(response.output.shape) == [len(rows), out_n], "output shape")
        c.check(response.version == 1 and response.request_id == "py-1",
                "response carries version and request_id")
        got = struct.unpack(f"<{len(rows) * out_n}f", response.output.data)
        flat_want = [v for r in want for v in r]
        mismatches = [i for i, (a, b) in enumerate(zip(got, flat_want)) if a != b]
        c.check(not mismatches,
                f"Infer output equals the Python oracle bit for bit "
                f"({len(mismatches)} mismatches, first {mismatches[:3]})")

        response16 = inference.Infer(inference_pb2.InferRequest(
            model="demo", input=tensor, output_dtype=inference_pb2.DTYPE_FP16),
            timeout=30)
        got16 = struct.unpack(f"<{len(rows) * out_n}e", response16.output.data)
        c.check(all(a == struct.unpack("<e", struct.pack("<e", b))[0]
                    for a, b in zip(got16, flat_want)),
                "FP16 output is the oracle rounded to binary16")

        # An invalid request: INVALID_ARGUMENT naming the field.
        bad = inference_pb2.Tensor(dtype=inference_pb2.DTYPE_FP32, shape=[1, features + 1],
                                   data=b"\0" * 4 * (features + 1))
        try:
            inference.Infer(inference_pb2.InferRequest(model="demo", input=bad), timeout=10)
            c.check(False, "wrong shape must fail")
        except grpc.RpcError as e:
            c.check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and
                    "input.shape" in e.details(),
                    f"wrong shape -> INVALID_ARGUMENT naming input.shape: {e.code()} {e.details()}")

        # InferStream: three requests, answers matched by request_id.
        def requests():
            for i in range(3):
                yield inference_pb2.InferRequest(
                    model="demo", request_id=f"s{i}",
                    input=inference_pb2.Tensor(
                        dtype=inference_pb2.DTYPE_FP32, shape=[1, features],
                        data=struct.pack(f"<{features}f", *rows[i])))
        answers = {a.request_id: a for a in inference.InferStream(requests(), timeout=30)}
        c.check(sorted(answers) == ["s0", "s1", "s2"], "InferStream answers every id")
        for i in range(3):
            a = answers.get(f"s{i}")
            ok = a is not None and a.HasField("response") and \
                list(struct.unpack(f"<{out_n}f", a.response.output.data)) == want[i]
            c.check(ok, f"InferStream answer s{i} equals the oracle")

        # /metrics over HTTP.
        text = urllib.request.urlopen(
            f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        m = re.search(r'^bitnet_requests_total\{code="OK",model="demo"\} (\S+)$', text, re.M)
        c.check(m is not None and float(m.group(1)) == 5.0,
                f"bitnet_requests_total OK = 5 (2 Infer + 3 stream), got {m and m.group(1)}")
        c.check("bitnet_batch_rows_bucket" in text and "grpc_server_handled_total" in text,
                "metrics carry the fixed names")

        # bitnet-cli against the same server (when CTest gives its path).
        cli = os.environ.get("BITNET_CLI")
        if cli and os.path.exists(cli):
            check_cli(c, cli, port, rows, want, tmp)

        # SIGTERM: drains and exits 0 well within the grace period.
        channel.close()
        start = time.time()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            code = None
        c.check(code == 0, f"exit code after SIGTERM is 0, got {code}")
        c.check(time.time() - start < 10, "exit within the grace period")
        log = open(log_path).read()
        c.check("event=drain_started" in log and "event=drain_finished" in log,
                "structured log shows the drain")
        proc = None
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"python client test: {c.passed} checks passed, {c.failed} failed "
          f"({'PASS' if c.failed == 0 else 'FAIL'})")
    return 0 if c.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

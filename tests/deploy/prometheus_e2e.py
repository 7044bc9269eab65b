#!/usr/bin/env python3
"""End to end: bitnet-server scraped by a real Prometheus.

Starts bitnet-server (small demo model, CPU) and Prometheus (Debian package
`prometheus`) on free 127.0.0.1 ports, Prometheus with a copy of
deploy/prometheus.yml (and deploy/rules.yml) whose targets are rewritten to
the loopback ports; sends a known number of inference requests (Python gRPC
stubs generated from proto/ at run time, plus `bitnet-cli health`, the
Dockerfile's HEALTHCHECK command); then checks through Prometheus's HTTP API
(/api/v1/query) that the bitnet_* and grpc_* series hold exactly the counts
sent, that the recording rules and every Grafana dashboard query evaluate,
and that `promtool check config` / `promtool check metrics` pass. Finally
SIGTERM must drain the server and make it exit 0.

Exit status: 0 all passed, 1 a check failed, 77 (CTest SKIP_RETURN_CODE)
when the server is not built or Prometheus / gRPC for Python is missing.
Everything listens on 127.0.0.1 only; children die with this process
(PR_SET_PDEATHSIG) and are stopped on every exit path.
"""

import argparse
import atexit
import ctypes
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SKIP = 77

CHILDREN = []


def set_pdeathsig():
    """In the child: die with the parent (even if it is SIGKILLed)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


def spawn(argv, log_path):
    log = open(log_path, "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL,
                            preexec_fn=set_pdeathsig)
    CHILDREN.append(proc)
    return proc


def stop_children():
    for proc in CHILDREN:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.time() + 5
    for proc in CHILDREN:
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def on_signal(signum, _frame):
    stop_children()
    sys.exit(128 + signum)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode("utf-8")


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, ok, what, detail=""):
        if ok:
            self.passed += 1
            print(f"PASS {what}", flush=True)
        else:
            self.failed += 1
            print(f"FAIL {what}" + (f": {detail}" if detail else ""),
                  flush=True)
        return ok


class Prometheus:
    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"

    def query(self, expr):
        """Instant query -> list of (labels, float value); raises on error."""
        url = (f"{self.base}/api/v1/query?"
               + urllib.parse.urlencode({"query": expr}))
        _, body = http_get(url)
        data = json.loads(body)
        if data.get("status") != "success":
            raise RuntimeError(f"query {expr!r}: {data}")
        result = data["data"]["result"]
        if data["data"]["resultType"] == "scalar":
            return [({}, float(result[1]))]
        return [(r["metric"], float(r["value"][1])) for r in result]

    def value(self, expr):
        """The single sample of `expr`, or None when it has no sample."""
        result = self.query(expr)
        if len(result) != 1:
            return None if not result else float("nan")
        return result[0][1]


def generate_stubs(out_dir):
    """bitnet.v1 Python stubs from proto/ (protoc + grpc_python_plugin)."""
    plugin = shutil.which("grpc_python_plugin")
    protoc = shutil.which("protoc")
    if not plugin or not protoc:
        return "protoc or grpc_python_plugin not installed"
    proto_dir = os.path.join(ROOT, "proto")
    r = subprocess.run(
        [protoc, f"-I{proto_dir}", f"--python_out={out_dir}",
         f"--grpc_out={out_dir}", f"--plugin=protoc-gen-grpc={plugin}",
         "bitnet/v1/inference.proto"],
        capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"protoc failed: {r.stderr}")
    sys.path.insert(0, out_dir)
    return None


def health_status(grpc, channel, service=""):
    """grpc.health.v1.Health/Check with hand-encoded protobuf (no stubs):
    request field 1 = service; response field 1 = status (1 = SERVING)."""
    name = service.encode()
    request = (b"\x0a" + bytes([len(name)]) + name) if name else b""
    check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                request_serializer=lambda b: b,
                                response_deserializer=lambda b: b)
    try:
        reply = check(request, timeout=2)
    except grpc.RpcError as e:
        return e.code().name
    return {b"": "UNKNOWN", b"\x08\x01": "SERVING",
            b"\x08\x02": "NOT_SERVING"}.get(reply, repr(reply))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", required=True,
                        help="bitnet-server binary (SKIP when missing)")
    parser.add_argument("--cli", default="",
                        help="bitnet-cli binary (optional: health check)")
    parser.add_argument("--prometheus-config",
                        default=os.path.join(ROOT, "deploy", "prometheus.yml"))
    parser.add_argument("--dashboard", default=os.path.join(
        ROOT, "deploy", "grafana", "dashboards", "bitnet-serve.json"))
    parser.add_argument("--timeout", type=int, default=150,
                        help="seconds for the whole test")
    args = parser.parse_args()

    if not args.server or not os.path.exists(args.server):
        print(f"SKIP bitnet-server not built yet ({args.server!r})")
        return SKIP
    prometheus_bin = shutil.which("prometheus")
    promtool = shutil.which("promtool")
    if not prometheus_bin or not promtool:
        print("SKIP prometheus/promtool not installed (Debian package "
              "`prometheus`, listed in setup.sh)")
        return SKIP
    try:
        import grpc  # noqa: F401  (python3-grpcio)
        import yaml
    except ImportError as e:
        print(f"SKIP {e} (python3-grpcio / python3-yaml)")
        return SKIP

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(
        TimeoutError(f"test exceeded {args.timeout} s")))
    signal.alarm(args.timeout)
    atexit.register(stop_children)

    tmp = tempfile.mkdtemp(prefix="bitnet-prom-e2e-")
    atexit.register(shutil.rmtree, tmp, True)
    c = Checks()
    try:
        run(args, c, tmp, grpc, yaml, promtool, prometheus_bin)
    except Exception as e:  # a crash is a failure with its logs shown
        c.check(False, "test ran to completion", f"{type(e).__name__}: {e}")
        for log in ("server.log", "prometheus.log"):
            path = os.path.join(tmp, log)
            if os.path.exists(path):
                print(f"--- {log} (tail) ---")
                print(open(path, errors="replace").read()[-3000:])
    finally:
        signal.alarm(0)
        stop_children()
    print(f"{c.passed} passed, {c.failed} failed")
    return 1 if c.failed else 0


def start_server(args, tmp, max_request_rows, drain_seconds):
    """Starts bitnet-server on ports it picks itself (0: no race with other
    tests for a port probed free and released); returns (process, gRPC port,
    metrics port), the ports None when it did not come up."""
    log_path = os.path.join(tmp, "server.log")
    server = spawn([args.server, "--address=127.0.0.1", "--port=0",
                    "--metrics_address=127.0.0.1", "--metrics_port=0",
                    "--demo_model=small", "--device=cpu", "--cpu_threads=1",
                    f"--max_request_rows={max_request_rows}",
                    f"--drain_grace_period={drain_seconds}s"], log_path)
    deadline = time.time() + 60
    while time.time() < deadline and server.poll() is None:
        text = open(log_path, errors="replace").read()
        m = re.search(r"event=server_started .*? port=(\d+) metrics_port=(\d+)", text)
        if m and "event=serving" in text:
            return server, int(m.group(1)), int(m.group(2))
        time.sleep(0.1)
    return server, None, None


def run(args, c, tmp, grpc, yaml, promtool, prometheus_bin):
    max_request_rows = 16
    drain_seconds = 5

    # -- promtool check config on the shipped file.
    r = subprocess.run([promtool, "check", "config", args.prometheus_config],
                       capture_output=True, text=True)
    c.check(r.returncode == 0, "promtool check config deploy/prometheus.yml",
            r.stdout + r.stderr)

    # -- bitnet-server.
    server, grpc_port, metrics_port = start_server(args, tmp, max_request_rows,
                                                   drain_seconds)
    if not c.check(grpc_port is not None, "server started and logged its ports",
                   f"exit code {server.poll()}"):
        raise RuntimeError("server did not start")
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    deadline = time.time() + 60
    status = None
    while time.time() < deadline and server.poll() is None:
        status = health_status(grpc, channel)
        if status == "SERVING":
            break
        time.sleep(0.2)
    if not c.check(status == "SERVING", "server reports SERVING (health \"\")",
                   f"last status {status}, exit code {server.poll()}"):
        raise RuntimeError("server did not become healthy")
    c.check(health_status(grpc, channel, "demo") == "SERVING",
            "health for service \"demo\" is SERVING (the per-model probe)")

    if args.cli and os.path.exists(args.cli):
        # The image's HEALTHCHECK command, exactly as the Dockerfile has it,
        # with the test's binary and port.
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import check_deploy
        stages = check_deploy.dockerfile_stages(
            check_deploy.dockerfile_instructions(
                open(os.path.join(ROOT, "Dockerfile")).read()))
        for stage in stages:
            hc = [r for k, r in stage["ins"] if k == "HEALTHCHECK"]
            if not hc:
                continue
            argv = check_deploy.exec_form(hc[-1].split("CMD", 1)[1].strip())
            argv = [args.cli] + [re.sub(r"127\.0\.0\.1:\d+",
                                        f"127.0.0.1:{grpc_port}", a)
                                 for a in argv[1:]]
            r = subprocess.run(argv, capture_output=True, text=True,
                               timeout=20)
            c.check(r.returncode == 0 and "SERVING" in r.stdout,
                    f"the {stage['name']} image's HEALTHCHECK command exits 0 "
                    "on a serving server", r.stdout + r.stderr)
    else:
        print("NOTE bitnet-cli not built: HEALTHCHECK command not exercised")

    # -- /metrics and promtool check metrics.
    status_code, text = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
    c.check(status_code == 200 and "bitnet_build_info" in text,
            "GET /metrics serves the text format")
    r = subprocess.run([promtool, "check", "metrics"], input=text,
                       capture_output=True, text=True)
    c.check(r.returncode == 0, "promtool check metrics on a /metrics scrape",
            (r.stdout + r.stderr).strip())

    # -- Prometheus with a copy of deploy/prometheus.yml pointed at loopback.
    # Prometheus cannot report a port it picked, so its port is probed free;
    # another test may take it before Prometheus binds it, and then
    # Prometheus exits at once: that start is retried on a new port.
    config_dir = os.path.dirname(os.path.abspath(args.prometheus_config))
    for attempt in range(3):
        prom_port = free_port()
        config = yaml.safe_load(open(args.prometheus_config))
        config.setdefault("global", {})
        config["global"]["scrape_interval"] = "1s"
        config["global"]["evaluation_interval"] = "1s"
        jobs = {sc["job_name"]: sc for sc in config.get("scrape_configs", [])}
        if attempt == 0:
            c.check("bitnet-server" in jobs, "prometheus.yml has job bitnet-server")
        for name, sc in jobs.items():
            target = (f"127.0.0.1:{metrics_port}" if name == "bitnet-server"
                      else f"127.0.0.1:{prom_port}")
            sc["static_configs"] = [{"targets": [target]}]
        for rule_file in config.get("rule_files", []):
            shutil.copy(os.path.join(config_dir, rule_file),
                        os.path.join(tmp, os.path.basename(rule_file)))
        config["rule_files"] = [os.path.basename(f)
                                for f in config.get("rule_files", [])]
        prom_config = os.path.join(tmp, "prometheus.yml")
        with open(prom_config, "w") as f:
            yaml.safe_dump(config, f)
        if attempt == 0:
            r = subprocess.run([promtool, "check", "config", prom_config],
                               capture_output=True, text=True)
            c.check(r.returncode == 0, "promtool check config on the rewritten copy",
                    r.stdout + r.stderr)
        prom = spawn([prometheus_bin, f"--config.file={prom_config}",
                      f"--storage.tsdb.path={os.path.join(tmp, f'data{attempt}')}",
                      f"--web.listen-address=127.0.0.1:{prom_port}",
                      "--log.level=warn"],
                     os.path.join(tmp, "prometheus.log"))
        api = Prometheus(prom_port)
        deadline = time.time() + 30
        ready = False
        while time.time() < deadline and prom.poll() is None:
            try:
                ready = http_get(f"{api.base}/-/ready", timeout=1)[0] == 200
            except OSError:
                ready = False
            if ready:
                break
            time.sleep(0.3)
        if ready or prom.poll() is None:
            break  # ready, or up but slow: no second instance
    if not c.check(ready, "Prometheus is ready",
                   f"exit code {prom.poll()}"):
        raise RuntimeError("prometheus did not start")

    # -- Traffic: known requests and rows.
    stubs = os.path.join(tmp, "stubs")
    os.makedirs(stubs)
    problem = generate_stubs(stubs)
    if problem:
        raise RuntimeError(f"cannot generate gRPC stubs: {problem}")
    from bitnet.v1 import inference_pb2, inference_pb2_grpc  # noqa: E402
    stub = inference_pb2_grpc.InferenceStub(channel)
    info = stub.GetModel(inference_pb2.GetModelRequest(name="demo"),
                         timeout=10)
    features = info.input_shape[-1]
    out_features = info.output_shape[-1]
    rng = random.Random(7)

    def request(rows, model="demo"):
        values = [rng.uniform(-1, 1) for _ in range(rows * features)]
        return inference_pb2.InferRequest(
            model=model, input=inference_pb2.Tensor(
                dtype=inference_pb2.DTYPE_FP32, shape=[rows, features],
                data=struct.pack(f"<{len(values)}f", *values)))

    ok_expr = 'bitnet_requests_total{job="bitnet-server",model="demo",code="OK"}'

    def wait_for_scrape(want):
        """Polls until Prometheus has scraped `want` OK requests."""
        deadline = time.time() + 30
        got = None
        while time.time() < deadline:
            got = api.value(ok_expr)
            if got == want:
                break
            time.sleep(0.3)
        return got

    # Two waves with a scrape in between, so rate() and histogram_quantile()
    # over the window see an increase (one wave could fall entirely before
    # the first scrape and leave every rate at 0).
    waves = [[1, 2, 3], [5, 8, 13, 16]]
    sent_ok = sent_rows = 0
    for i, wave in enumerate(waves):
        for rows in wave:
            reply = stub.Infer(request(rows), timeout=30)
            c.check(list(reply.output.shape) == [rows, out_features],
                    f"Infer of {rows} rows answers [{rows}, {out_features}]",
                    str(list(reply.output.shape)))
        sent_ok += len(wave)
        sent_rows += sum(wave)
        if i == 0:
            got = wait_for_scrape(sent_ok)
            c.check(got == sent_ok, f"first wave scraped ({sent_ok} "
                    "requests)", f"got {got}")
    codes = {}
    for what, req in (("too many rows", request(max_request_rows + 1)),
                      ("unknown model", request(1, model="no-such-model"))):
        try:
            stub.Infer(req, timeout=30)
            codes[what] = "OK"
        except grpc.RpcError as e:
            codes[what] = e.code().name
    c.check(codes == {"too many rows": "INVALID_ARGUMENT",
                      "unknown model": "NOT_FOUND"},
            "bad requests fail with INVALID_ARGUMENT / NOT_FOUND", str(codes))

    # -- Wait until a scrape after all the traffic reached Prometheus.
    got = wait_for_scrape(sent_ok)
    c.check(got == sent_ok, f"{ok_expr} = {sent_ok} (requests sent)",
            f"got {got}")
    deadline = time.time() + 15
    while time.time() < deadline and api.value(
            'grpc_server_handled_total{grpc_method="Infer",'
            'grpc_code="NOT_FOUND"}') != 1:
        time.sleep(0.3)
    time.sleep(3)  # a few more scrapes so rate() has samples in its window

    def expect(expr, want, what=None):
        got = api.value(expr)
        c.check(got == want, what or f"{expr} = {want}", f"got {got}")

    expect('up{job="bitnet-server"}', 1)
    expect('bitnet_requests_total{model="demo",code="INVALID_ARGUMENT"}', 1)
    expect('bitnet_requests_total{model="unknown",code="NOT_FOUND"}', 1,
           "an unknown model name counts under model=\"unknown\" (no series "
           "per invented name)")
    expect('count(bitnet_requests_total{model="no-such-model"}) or vector(0)',
           0, "no series for the invented model name")
    expect('bitnet_rows_total{model="demo"}', sent_rows,
           f"bitnet_rows_total{{model=\"demo\"}} = {sent_rows} (rows sent)")
    expect('sum(bitnet_requests_total{model="demo"}) - '
           'sum(bitnet_request_duration_seconds_count{model="demo"})', 0,
           "bitnet_request_duration_seconds_count = requests answered")
    expect('bitnet_queue_duration_seconds_count{model="demo"}', sent_ok,
           f"bitnet_queue_duration_seconds_count = {sent_ok} (queued "
           "requests)")
    expect('bitnet_batch_rows_sum{model="demo"}', sent_rows,
           f"bitnet_batch_rows_sum = {sent_rows} (every row batched once)")
    batches = api.value('bitnet_batch_rows_count{model="demo"}')
    c.check(batches is not None and 1 <= batches <= sent_ok,
            f"1 <= batches <= {sent_ok}", f"got {batches}")
    expect('bitnet_batch_compute_seconds_count{model="demo"}', batches,
           "one compute-time sample per batch")
    expect('bitnet_queue_rows{model="demo"}', 0, "queue empty after traffic")
    expect('bitnet_instance_healthy{model="demo",device="cpu"}', 1,
           "the model's one instance is in rotation")
    expect('bitnet_model_info{model="demo",version="1",backend="cpu"}', 1)
    # The CPU backend reports 0 (weights live in ordinary host memory); the
    # series must exist so the dashboard and alerts see every device.
    mem = api.value('bitnet_device_memory_used_bytes{device="cpu"}')
    c.check(mem is not None and mem >= 0,
            "bitnet_device_memory_used_bytes{device=\"cpu\"} exists",
            f"got {mem}")
    expect('count(bitnet_build_info == 1)', 1, "bitnet_build_info = 1")
    for code, n in (("OK", sent_ok), ("INVALID_ARGUMENT", 1),
                    ("NOT_FOUND", 1)):
        expect('grpc_server_handled_total{grpc_service="bitnet.v1.Inference",'
               f'grpc_method="Infer",grpc_code="{code}"}}', n)
    expect('grpc_server_handling_seconds_count{grpc_method="Infer"}',
           sent_ok + 2)
    names = set(json.loads(http_get(
        f"{api.base}/api/v1/label/__name__/values")[1])["data"])
    required = {
        "bitnet_requests_total", "bitnet_rows_total",
        "bitnet_request_duration_seconds_bucket",
        "bitnet_queue_duration_seconds_bucket", "bitnet_batch_rows_bucket",
        "bitnet_batch_compute_seconds_bucket", "bitnet_queue_rows",
        "bitnet_model_info", "bitnet_device_memory_used_bytes",
        "bitnet_build_info", "grpc_server_handled_total",
        "grpc_server_handling_seconds_bucket"}
    c.check(required <= names, "every fixed metric with data is in Prometheus",
            f"missing {sorted(required - names)}")
    fixed = {
        "bitnet_requests_total", "bitnet_rows_total",
        "bitnet_request_duration_seconds", "bitnet_queue_duration_seconds",
        "bitnet_batch_rows", "bitnet_batch_compute_seconds",
        "bitnet_queue_rows", "bitnet_model_info",
        "bitnet_device_memory_used_bytes", "bitnet_finetune_steps_total",
        "bitnet_finetune_loss", "bitnet_build_info",
        # Added with multi-device serving (docs/api.md "Metrics").
        "bitnet_instance_healthy"}
    suffixes = ("", "_bucket", "_sum", "_count")
    unexpected = {n for n in names if n.startswith("bitnet_") and
                  not any(n == m + s for m in fixed for s in suffixes)}
    c.check(not unexpected, "no bitnet_ series outside the fixed names",
            str(sorted(unexpected)))

    # -- Recording rules evaluate on the real data.
    deadline = time.time() + 15
    rate = None
    while time.time() < deadline:
        rate = api.value('bitnet:rows:rate1m{model="demo"}')
        if rate is not None:
            break
        time.sleep(1)
    c.check(rate is not None and rate > 0,
            "recording rule bitnet:rows:rate1m has a positive value",
            f"got {rate}")
    p99 = api.value('bitnet:request_duration_seconds:p99_1m{model="demo"}')
    c.check(p99 is not None and 0 < p99 < 60,
            "recording rule bitnet:request_duration_seconds:p99_1m is a "
            "latency in seconds", f"got {p99}")

    # -- Every Grafana dashboard query evaluates (real PromQL parser).
    dash = json.load(open(args.dashboard))
    queries = []

    def walk(panels):
        for p in panels:
            queries.extend((p.get("title"), t["expr"])
                           for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))
    walk(dash.get("panels", []))
    with_data = {"Request rate", "Request latency p50 / p99", "Batch rows",
                 "Queue rows", "Rows per second", "Loaded models"}
    for title, expr in queries:
        expr = (expr.replace("$__rate_interval", "1m")
                .replace("$model", ".*"))
        try:
            result = api.query(expr)
            ok, detail = True, ""
            if title in with_data:
                # The demo model's series is there and a finite number
                # (other series, e.g. model="unknown" with no batches, may
                # legitimately be NaN).
                demo = [v for labels, v in result
                        if labels.get("model", "demo") == "demo"]
                ok = bool(demo) and all(v == v and abs(v) != float("inf")
                                        for v in demo)
                detail = f"result {result}"
        except Exception as e:  # the query is invalid PromQL
            ok, detail = False, str(e)
        c.check(ok, f"dashboard query of '{title}' evaluates"
                + (" with data" if title in with_data else ""), detail)

    # -- SIGTERM drains and exits 0 within the grace period.
    channel.close()
    server.send_signal(signal.SIGTERM)
    try:
        code = server.wait(timeout=drain_seconds + 10)
    except subprocess.TimeoutExpired:
        code = None
    c.check(code == 0, f"SIGTERM: server drains and exits 0 within "
            f"{drain_seconds + 10} s", f"exit code {code}")
    log = open(os.path.join(tmp, "server.log"), errors="replace").read()
    c.check(re.search(r"signal_received", log) is not None,
            "server logged the signal it drained on")


if __name__ == "__main__":
    sys.exit(main())

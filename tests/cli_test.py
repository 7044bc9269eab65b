#!/usr/bin/env python3
"""bitnet-cli and bitnet-load against a spawned bitnet-server (loopback only).

Starts bitnet-server with the small demo model (64 -> 128 -> 32, served as
"demo"), an admin token and a model repository holding the same model as a
file, then checks:
  - bitnet-cli: every command, input formats (CSV, JSON, stdin, random),
    output formats (CSV, JSON, table), dtypes, and the exit codes and error
    messages shell scripts rely on (0 ok, 1 RPC error, 2 usage/input error);
  - admin: token handling, load/unload/stats/save, finetune on the digits
    fixture with the loss curve written as CSV and PNG;
  - bitnet-load: closed and open loop smoke runs of a few hundred requests
    whose JSON/CSV output is parsed and checked for consistent counts (also
    against the server's own /metrics), several rows per request, Poisson
    arrivals, a sweep with a PNG chart, several addresses, and usage errors;
  - TLS: both tools with --tls_ca and --tls_server_name against a second,
    TLS-only server (certificates made with the openssl CLI).

Environment: BITNET_SERVER, BITNET_CLI, BITNET_LOAD (binaries),
BITNET_TEST_DATA_DIR (tests/fixtures). Exit 0 = pass, 1 = fail, 77 = skip.
"""
import csv
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

SKIP = 77


class Checker:
    def __init__(self):
        self.failures = 0
        self.checks = 0

    def check(self, ok, what):
        self.checks += 1
        if ok:
            print(f"ok   {what}")
        else:
            self.failures += 1
            print(f"FAIL {what}")
        return ok


def f32(v):
    """v rounded to float32 (what the server computed), as a Python float."""
    return struct.unpack("<f", struct.pack("<f", v))[0]


def scrape(metrics_port):
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        return r.read().decode()


def metric(text, series):
    """Value of the sample named exactly `series` (labels as printed)."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[1])
    return None


def ok_requests(text, model):
    total = 0.0
    for line in text.splitlines():
        if line.startswith("bitnet_requests_total{") and 'code="OK"' in line \
                and f'model="{model}"' in line:
            total += float(line.split()[1])
    return total


def is_png(path):
    try:
        with open(path, "rb") as f:
            return f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 1000
    except OSError:
        return False


def start_server(server, tmp, repo, token_file):
    log_path = os.path.join(tmp, "server.log")
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [server, "--port=0", "--metrics_port=0", "--address=127.0.0.1",
         "--metrics_address=127.0.0.1", "--device=cpu", "--cpu_threads=1",
         "--demo_model=small", f"--model_repository={repo}",
         f"--admin_token_file={token_file}", "--drain_grace_period=10s"],
        stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        text = open(log_path).read()
        m = re.search(r"event=server_started .*? port=(\d+) metrics_port=(\d+)", text)
        if m and "event=serving" in text:
            return proc, int(m.group(1)), int(m.group(2)), log_path
        time.sleep(0.05)
    print(open(log_path).read())
    return proc, None, None, log_path


def check_cli(c, cli, port, tmp, token_file, fixtures):
    address = f"--address=127.0.0.1:{port}"
    admin = f"--admin_token_file={token_file}"

    def run(*args, stdin=None):
        return subprocess.run([cli, address, "--timeout=60s", *args], input=stdin,
                              capture_output=True, text=True)

    # --- health, models
    r = run("health")
    c.check(r.returncode == 0 and r.stdout.strip() == "SERVING", f"health: {r.stdout!r}")
    r = run("health", "--service=demo")
    c.check(r.returncode == 0 and r.stdout.strip() == "SERVING", "health of model demo")
    # --wait_for_ready against a port nobody listens on: the call waits out
    # its deadline instead of failing at once.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        unused = s.getsockname()[1]
    started = time.monotonic()
    r = subprocess.run([cli, f"--address=127.0.0.1:{unused}", "--timeout=1s", "--wait_for_ready",
                        "health"], capture_output=True, text=True)
    waited = time.monotonic() - started
    c.check(r.returncode == 1 and "DEADLINE_EXCEEDED" in r.stderr and waited >= 0.9,
            f"health --wait_for_ready with no server: DEADLINE_EXCEEDED after {waited:.2f} s: "
            f"{r.stderr!r}")
    r = run("health", "--service=nope")
    c.check(r.returncode == 1 and "rpc failed: NOT_FOUND" in r.stderr,
            f"health of an unknown service exits 1 with NOT_FOUND: {r.stderr!r}")
    r = run("models")
    c.check(r.returncode == 0 and r.stdout.startswith("name\tlatest_version") and
            "\ndemo\t1\t1\tcpu\t64\t32" in r.stdout, f"models table: {r.stdout!r}")
    r = run("models", "--output=json")
    doc = json.loads(r.stdout) if r.returncode == 0 else {}
    c.check([m["name"] for m in doc.get("models", [])] == ["demo"] and
            doc["models"][0]["input_features"] == 64, "models --output=json")

    # --- infer: formats agree with each other
    rows = [[((i * 7 + j * 3) % 17 - 8) / 8.0 for j in range(64)] for i in range(3)]
    csv_path = os.path.join(tmp, "rows.csv")
    with open(csv_path, "w") as f:
        f.write("# three rows\n\n")
        for row in rows:
            f.write(", ".join(repr(v) for v in row) + "\n")
    r = run("infer", "--model=demo", f"--input={csv_path}")
    c.check(r.returncode == 0, f"infer CSV file: {r.stderr!r}")
    csv_out = [[f32(float(v)) for v in line.split(",")] for line in r.stdout.split()]
    c.check(len(csv_out) == 3 and all(len(o) == 32 for o in csv_out),
            "infer CSV output is 3 rows of 32 values")
    c.check("model=demo version=1 rows=3" in r.stderr, "infer prints a summary on stderr")
    r = run("infer", "--model=demo", "--input=-", "--output=json",
            stdin=json.dumps({"rows": rows}))
    doc = json.loads(r.stdout) if r.returncode == 0 else {}
    c.check(doc.get("shape") == [3, 32] and doc.get("version") == 1 and
            doc.get("outputs") == csv_out, "infer JSON stdin -> JSON equals the CSV run")
    json_path = os.path.join(tmp, "rows.json")
    with open(json_path, "w") as f:
        json.dump(rows, f)
    r = run("infer", "--model=demo", f"--input={json_path}", "--output=csv")
    c.check(r.returncode == 0 and
            [[f32(float(v)) for v in line.split(",")] for line in r.stdout.split()] == csv_out,
            "infer JSON file (bare array) -> CSV equals the CSV run")
    r = run("infer", "--model=demo", "--input=-", "--dtype=fp16", "--output=json",
            stdin="\n".join(",".join(repr(v) for v in row) for row in rows))
    doc = json.loads(r.stdout) if r.returncode == 0 else {}
    # Inputs are multiples of 1/8: exact in fp16, so the outputs are identical.
    c.check(doc.get("outputs") == csv_out, f"infer --dtype=fp16 (exact inputs): {r.stderr!r}")
    r = run("infer", "--model=demo", "--random=5", "--seed=3", "--output=json")
    r2 = run("infer", "--model=demo", "--random=5", "--seed=3", "--output=json")
    c.check(r.returncode == 0 and json.loads(r.stdout)["shape"] == [5, 32] and
            json.loads(r.stdout)["outputs"] == json.loads(r2.stdout)["outputs"],
            "infer --random is reproducible from --seed")

    # --- infer errors
    r = run("infer", "--model=nope", "--random=1")
    c.check(r.returncode == 1 and "rpc failed: NOT_FOUND" in r.stderr,
            f"unknown model exits 1 with NOT_FOUND: {r.stderr!r}")
    r = run("infer", "--model=demo", "--input=-", stdin="1,2,3\n")
    c.check(r.returncode == 1 and "INVALID_ARGUMENT" in r.stderr and "input.shape" in r.stderr,
            f"wrong width exits 1 with the server's message: {r.stderr!r}")
    bad_csv = os.path.join(tmp, "bad.csv")
    with open(bad_csv, "w") as f:
        f.write("1,2\n3,oops\n")
    r = run("infer", "--model=demo", f"--input={bad_csv}")
    c.check(r.returncode == 2 and "bad.csv" in r.stderr and "CSV line 2" in r.stderr and
            "\"oops\" is not a number" in r.stderr, f"bad CSV cell exits 2 naming it: {r.stderr!r}")
    r = run("infer", "--model=demo", f"--input={tmp}/missing.csv")
    c.check(r.returncode == 2 and "cannot read" in r.stderr, "missing input file exits 2")
    for args, needle in ((["frobnicate"], "unknown command"),
                         (["infer"], "needs --model"),
                         (["infer", "--model=demo"], "exactly one of"),
                         (["--no_such_flag", "health"], "unknown flag --no_such_flag"),
                         (["infer", "--model=demo", "--random=x"], "--random=x"),
                         (["infer", "--model=demo", "--random=1", "--output=xml"], "--output=xml"),
                         (["infer", "--model=demo", "--random=1", "--dtype=int8"], "--dtype=int8"),
                         (["health", "models"], "exactly one command"),
                         ([], "missing command"),
                         (["--retries=9", "health"], "--retries"),
                         (["load", admin], "needs --model and --path")):
        r = run(*args)
        c.check(r.returncode == 2 and needle in r.stderr,
                f"usage error {args} exits 2 with {needle!r}: rc={r.returncode} {r.stderr[:120]!r}")
    r = subprocess.run([cli, "--help"], capture_output=True, text=True)
    c.check(r.returncode == 0 and "--finetune_timeout" in r.stdout and "exit codes" in r.stdout,
            "--help lists commands, flags and exit codes")

    # --- admin: credentials
    r = run("stats")
    c.check(r.returncode == 1 and "UNAUTHENTICATED" in r.stderr, f"stats without a token: {r.stderr!r}")
    wrong = os.path.join(tmp, "wrong_token")
    with open(wrong, "w") as f:
        f.write("not-the-right-token-at-all\n")
    r = run("stats", f"--admin_token_file={wrong}")
    c.check(r.returncode == 1 and "PERMISSION_DENIED" in r.stderr, "stats with a wrong token")
    r = run("stats", f"--admin_token_file={tmp}/nope")
    c.check(r.returncode == 2 and "--admin_token_file" in r.stderr, "unreadable token file exits 2")

    # --- admin: load, stats, unload
    r = run("load", admin, "--model=small", "--path=small.safetensors")
    c.check(r.returncode == 0 and "loaded small version 1 on cpu" in r.stdout,
            f"load: {r.stdout!r} {r.stderr!r}")
    r = run("load", admin, "--model=evil", "--path=../outside.safetensors")
    c.check(r.returncode == 1 and "PERMISSION_DENIED" in r.stderr, "load outside the repository")
    r = run("load", admin, "--model=ghost", "--path=ghost.safetensors", "--output=json")
    c.check(r.returncode == 1 and "NOT_FOUND" in r.stderr, "load a missing file")
    r = run("stats", admin, "--output=json")
    doc = json.loads(r.stdout) if r.returncode == 0 else {}
    demo = [m for m in doc.get("models", []) if m["name"] == "demo"]
    c.check(len(demo) == 1 and demo[0]["requests"] >= 6 and demo[0]["rows"] >= 22 and
            demo[0]["batches"] >= 1, f"stats --output=json counts the requests so far: {demo}")
    r = run("stats", admin)
    c.check(r.returncode == 0 and "server_version=" in r.stdout and "\ndemo\t1\t" in r.stdout,
            "stats table")
    r = run("load", admin, "--model=small2", "--path=small.safetensors")
    r = run("unload", admin, "--model=small2", "--output=json")
    doc = json.loads(r.stdout) if r.returncode == 0 else {}
    c.check(doc == {"name": "small2", "remaining_versions": []}, f"unload: {r.stdout!r}")
    r = run("unload", admin, "--model=small2")
    c.check(r.returncode == 1 and "NOT_FOUND" in r.stderr, "unload twice -> NOT_FOUND")

    # --- finetune on the digits fixture (the file-loaded model "small")
    digits = os.path.join(fixtures, "digits.safetensors")
    loss_csv = os.path.join(tmp, "loss.csv")
    loss_png = os.path.join(tmp, "loss.png")
    r = run("finetune", admin, "--model=small", f"--data={digits}", "--loss=cross_entropy",
            "--steps=40", "--batch_size=64", "--learning_rate=0.01", "--report_interval=5",
            "--upload_rows=500", f"--loss_csv={loss_csv}", f"--loss_png={loss_png}",
            "--progress", "--output=json")
    if r.returncode == 1 and "UNIMPLEMENTED" in r.stderr:
        print("SKIP finetune: this server has no Admin.FineTune")
    else:
        doc = json.loads(r.stdout) if r.returncode == 0 else {}
        c.check(r.returncode == 0 and doc.get("version") == 2 and doc.get("steps") == 40 and
                doc.get("examples") == 1437 and doc.get("reports") == 8,
                f"finetune digits: {r.stdout!r} {r.stderr[-400:]!r}")
        c.check("upload" in r.stderr and "training" in r.stderr and "40/40" in r.stderr,
                "finetune --progress shows upload and training progress on stderr")
        with open(loss_csv) as f:
            curve = list(csv.DictReader(f))
        c.check([int(row["step"]) for row in curve] == list(range(5, 41, 5)),
                f"loss CSV has one row per report: {[row['step'] for row in curve]}")
        if curve:
            c.check(float(curve[-1]["loss"]) < float(curve[0]["loss"]),
                    f"loss falls: {curve[0]['loss']} -> {curve[-1]['loss']}")
            c.check(abs(float(curve[-1]["loss"]) - doc.get("final_loss", -1)) < 1e-6,
                    "last CSV loss is the result's final_loss")
        c.check(is_png(loss_png), "loss PNG written")
        r = run("models", "--output=json")
        small = [m for m in json.loads(r.stdout)["models"] if m["name"] == "small"]
        c.check(small and small[0]["latest_version"] == 2, "the fine-tuned version serves")
        r = run("finetune", admin, "--model=small", f"--data={digits}", "--loss=mse", "--steps=1")
        c.check(r.returncode == 2 and "train.targets" in r.stderr,
                f"finetune mse on a labels file exits 2: {r.stderr!r}")
        r = run("finetune", admin, "--model=small", f"--data={digits}", "--loss=cross_entropy")
        c.check(r.returncode == 2 and "--steps" in r.stderr, "finetune without --steps/--epochs")
        r = run("finetune", admin, "--model=small", f"--data={digits}", "--loss=cross_entropy",
                "--steps=1", "--optimizer=adagrad")
        c.check(r.returncode == 1 and "INVALID_ARGUMENT" in r.stderr,
                f"finetune with a bad optimizer: the server's error: {r.stderr!r}")
        r = run("finetune", "--model=small", f"--data={digits}", "--loss=cross_entropy",
                "--steps=1")
        c.check(r.returncode == 1 and "UNAUTHENTICATED" in r.stderr, "finetune without token")

        # --- save
        r = run("save", admin, "--model=small", "--path=small-v2.safetensors")
        c.check(r.returncode == 0 and "saved small version 2 to small-v2.safetensors" in r.stdout,
                f"save: {r.stdout!r} {r.stderr!r}")
        r = run("save", admin, "--model=small", "--path=small-v2.safetensors")
        c.check(r.returncode == 1 and "ALREADY_EXISTS" in r.stderr, "save without --overwrite")
        r = run("save", admin, "--model=small", "--path=small-v2.safetensors", "--overwrite",
                "--noinclude_latents", "--output=json")
        doc = json.loads(r.stdout) if r.returncode == 0 else {}
        c.check(doc.get("has_latents") is False and doc.get("bytes", 0) > 0,
                f"save --overwrite --noinclude_latents: {r.stdout!r} {r.stderr!r}")
        r = run("load", admin, "--model=small3", "--path=small-v2.safetensors")
        c.check(r.returncode == 0, "the saved file loads again")


def check_load(c, load, port, metrics_port, tmp):
    address = f"--address=127.0.0.1:{port}"
    metrics_url = f"--metrics_url=http://127.0.0.1:{metrics_port}/metrics"

    def run(*args):
        return subprocess.run([load, address, "--model=demo", *args],
                              capture_output=True, text=True, timeout=300)

    before = ok_requests(scrape(metrics_port), "demo")
    out_json = os.path.join(tmp, "load.json")
    out_csv = os.path.join(tmp, "load.csv")
    r = run("--concurrency=8", "--requests=300", "--warmup=0.2s", metrics_url,
            f"--json={out_json}", f"--csv={out_csv}", "--connections=2")
    c.check(r.returncode == 0, f"bitnet-load closed loop exits 0: {r.stderr[-500:]!r}")
    doc = json.load(open(out_json)) if os.path.exists(out_json) else {"points": [{}]}
    p = doc["points"][0]
    c.check(doc.get("config", {}).get("features") == 64 and doc["config"]["mode"] == "closed",
            "JSON config names the model width and mode")
    c.check(p.get("requests") == 300 and p.get("ok") == 300 and p.get("errors") == 0 and
            p.get("codes") == {"OK": 300}, f"300 measured requests, all OK: {p.get('codes')}")
    lat = p.get("latency_ms", {})
    c.check(0 < lat.get("p50", 0) <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"],
            f"latency percentiles ordered: {lat}")
    c.check(p.get("seconds", 0) > 0 and
            abs(p["requests_per_second"] * p["seconds"] - 300) < 1e-6 * 300 + 1e-3 and
            p["rows_per_second"] == p["requests_per_second"],
            "requests/s x seconds = requests; rows/s = requests/s at 1 row per request")
    mb = p.get("mean_batch_rows")
    c.check(mb is not None and 1 <= mb <= 8, f"mean batch from /metrics within [1, 8]: {mb}")
    after = ok_requests(scrape(metrics_port), "demo")
    c.check(after - before >= 300, f"server counted >= 300 OK requests ({after - before})")
    rows = list(csv.DictReader(open(out_csv))) if os.path.exists(out_csv) else []
    c.check(len(rows) == 1 and rows[0]["ok"] == "300" and rows[0]["mode"] == "closed" and
            rows[0]["concurrency"] == "8", f"CSV row: {rows}")
    c.check("p50_ms" in r.stdout and "closed" in r.stdout, "summary table on stdout")

    # Open loop, constant arrivals, JSON on stdout.
    r = run("--rate=150", "--arrivals=constant", "--requests=200", "--warmup=0.1s",
            "--json=-")
    doc = json.loads(r.stdout) if r.returncode == 0 else {"points": [{}]}
    p = doc["points"][0]
    c.check(r.returncode == 0 and p.get("mode") == "open" and p.get("ok") == 200 and
            p.get("offered_rate") == 150 and p.get("client_overflow") == 0,
            f"open loop 200 requests at 150/s: {r.stderr[-300:]!r}")
    c.check(p.get("seconds", 0) > 1.0 and 100 < p.get("requests_per_second", 0) < 200,
            f"open loop paces arrivals: {p.get('requests_per_second')} req/s over {p.get('seconds')} s")
    c.check("p50_ms" in r.stderr, "with --json=- the table goes to stderr")

    # A sweep with a chart; two addresses (the same server twice) balanced.
    chart = os.path.join(tmp, "sweep.png")
    r = run("--concurrency=1:4:*2", "--duration=0.4s", "--warmup=0.1s", "--json=-",
            f"--chart={chart}", f"--address=127.0.0.1:{port},localhost:{port}")
    doc = json.loads(r.stdout) if r.returncode == 0 else {"points": []}
    c.check([p["concurrency"] for p in doc["points"]] == [1, 2, 4] and
            all(p["ok"] > 0 and p["errors"] == 0 for p in doc["points"]),
            f"sweep 1:4:*2 over two addresses: {r.stderr[-300:]!r}")
    c.check(is_png(chart), "sweep chart PNG written")

    # Several rows per request; Poisson arrivals.
    r = run("--concurrency=4", "--requests=60", "--rows_per_request=4", "--warmup=0s",
            metrics_url, "--json=-")
    doc = json.loads(r.stdout) if r.returncode == 0 else {"points": [{}]}
    p = doc["points"][0]
    c.check(p.get("ok") == 60 and p.get("rows_per_request") == 4 and
            abs(p["rows_per_second"] - 4 * p["requests_per_second"]) < 1e-6 * p["rows_per_second"] and
            p.get("mean_batch_rows") is not None and 4 <= p["mean_batch_rows"] <= 16,
            f"4 rows per request: rows/s = 4 x req/s, mean batch in [4, 16]: {p.get('mean_batch_rows')}")
    r = run("--rate=300", "--arrivals=poisson", "--requests=150", "--warmup=0s", "--json=-")
    doc = json.loads(r.stdout) if r.returncode == 0 else {"points": [{}]}
    p = doc["points"][0]
    c.check(p.get("ok") == 150 and p.get("arrivals") == "poisson",
            f"open loop with Poisson arrivals: {r.stderr[-200:]!r}")

    # InferStream items instead of unary calls: closed loop over 2 x 2
    # streams, then open loop.
    before = ok_requests(scrape(metrics_port), "demo")
    r = run("--api=stream", "--concurrency=8", "--requests=300", "--warmup=0.2s",
            "--connections=2", "--streams_per_connection=2", "--rows_per_request=2",
            metrics_url, "--json=-")
    doc = json.loads(r.stdout) if r.returncode == 0 else {"config": {}, "points": [{}]}
    p = doc["points"][0]
    c.check(doc["config"].get("api") == "stream" and
            doc["config"].get("streams_per_connection") == 2 and
            p.get("ok") == 300 and p.get("errors") == 0 and p.get("rows_per_request") == 2,
            f"bitnet-load --api=stream: 300 stream items OK: {r.stderr[-300:]!r}")
    lat = p.get("latency_ms", {})
    c.check(0 < lat.get("p50", 0) <= lat.get("p99", 0), f"stream item latencies: {lat}")
    after = ok_requests(scrape(metrics_port), "demo")
    c.check(after - before >= 300, f"server counted >= 300 OK stream items ({after - before})")
    r = run("--api=stream", "--rate=150", "--requests=100", "--warmup=0s", "--json=-")
    doc = json.loads(r.stdout) if r.returncode == 0 else {"points": [{}]}
    c.check(doc["points"][0].get("ok") == 100,
            f"bitnet-load --api=stream open loop: {r.stderr[-300:]!r}")
    r = run("--api=stream", "--concurrency=4", "--requests=20", "--warmup=0s",
            "--model_version=99")
    c.check(r.returncode == 1 and "NOT_FOUND" in r.stderr,
            "--api=stream: unknown version exits 1 before the run")

    # The warning when batches stay far below preferred_batch_rows.
    r = run("--concurrency=2", "--requests=50", "--warmup=0s", metrics_url)
    c.check(r.returncode == 0 and "far below preferred_batch_rows=128" in r.stderr,
            "warns when the mean batch is far below preferred_batch_rows")

    # Errors.
    r = run("--concurrency=2", "--requests=20", "--warmup=0s", "--model_version=99")
    c.check(r.returncode == 1 and "NOT_FOUND" in r.stderr, "unknown version exits 1 before the run")
    for args, needle in ((["--concurrency=0"], "--concurrency=0"),
                         (["--concurrency=4", "--rate=5"], "not both"),
                         (["--rate=10", "--arrivals=bursty"], "--arrivals=bursty"),
                         (["--concurrency=1:8"], "three parts"),
                         (["--rows_per_request=0"], "--rows_per_request"),
                         (["--api=grpc"], "--api=grpc"),
                         (["--api=stream", "--streams_per_connection=0"],
                          "--streams_per_connection"),
                         (["--metrics_url=ftp://x/metrics"], "http://"),
                         (["--bogus"], "unknown flag --bogus"),
                         (["extra"], "unexpected argument")):
        r = run(*args)
        c.check(r.returncode == 2 and needle in r.stderr,
                f"bitnet-load usage error {args} exits 2: rc={r.returncode} {r.stderr[:150]!r}")


def check_tls(c, server, cli, load, tmp):
    """--tls_ca / --tls_server_name of both tools against a TLS server whose
    certificate names only DNS:localhost (so 127.0.0.1 needs the override)."""
    if shutil.which("openssl") is None:
        print("SKIP TLS: no openssl CLI")
        return
    d = os.path.join(tmp, "tls")
    os.mkdir(d)
    script = (
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 "
        "-subj /CN=test-ca && "
        "openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr "
        "-subj /CN=localhost && "
        "printf 'subjectAltName=DNS:localhost\\n' > ext.cnf && "
        "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
        "-out server.pem -days 1 -extfile ext.cnf")
    r = subprocess.run(script, shell=True, cwd=d, capture_output=True, text=True)
    if not c.check(r.returncode == 0, f"openssl made a CA and a server certificate: {r.stderr[-300:]!r}"):
        return
    log_path = os.path.join(d, "server.log")
    proc = subprocess.Popen(
        [server, "--port=0", "--metrics_port=-1", "--address=127.0.0.1", "--device=cpu",
         "--cpu_threads=1", "--demo_model=small", f"--tls_cert={d}/server.pem",
         f"--tls_key={d}/server.key"],
        stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    try:
        port = None
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None and port is None:
            m = re.search(r"event=serving port=(\d+)", open(log_path).read())
            port = int(m.group(1)) if m else None
            time.sleep(0.05)
        if not c.check(port is not None, "TLS server started"):
            return
        base = [f"--address=127.0.0.1:{port}", "--timeout=20s"]
        r = subprocess.run([cli, *base, f"--tls_ca={d}/ca.pem", "--tls_server_name=localhost",
                            "infer", "--model=demo", "--random=2"], capture_output=True, text=True)
        c.check(r.returncode == 0 and len(r.stdout.split()) == 2,
                f"cli over TLS with --tls_server_name: {r.stderr[-200:]!r}")
        r = subprocess.run([cli, *base, f"--tls_ca={d}/ca.pem", "health"],
                           capture_output=True, text=True)
        c.check(r.returncode == 1 and "UNAVAILABLE" in r.stderr,
                "cli over TLS to 127.0.0.1 without the name override fails (name mismatch)")
        r = subprocess.run([cli, *base, "health"], capture_output=True, text=True)
        c.check(r.returncode == 1 and "UNAVAILABLE" in r.stderr, "plaintext cli to a TLS server fails")
        r = subprocess.run([cli, *base, f"--tls_ca={d}/missing.pem", "health"],
                           capture_output=True, text=True)
        c.check(r.returncode == 2 and "tls_ca" in r.stderr, "unreadable --tls_ca exits 2")
        r = subprocess.run([load, *base[:1], "--model=demo", f"--tls_ca={d}/ca.pem",
                            "--tls_server_name=localhost", "--concurrency=4", "--requests=50",
                            "--warmup=0s", "--json=-"], capture_output=True, text=True, timeout=120)
        doc = json.loads(r.stdout) if r.returncode == 0 else {"points": [{}]}
        c.check(doc["points"][0].get("ok") == 50, f"bitnet-load over TLS: {r.stderr[-200:]!r}")
    finally:
        proc.kill()
        proc.wait()


def main():
    server = os.environ.get("BITNET_SERVER")
    cli = os.environ.get("BITNET_CLI")
    load = os.environ.get("BITNET_LOAD")
    fixtures = os.environ.get("BITNET_TEST_DATA_DIR",
                              os.path.join(os.path.dirname(__file__), "fixtures"))
    for name, path in (("BITNET_SERVER", server), ("BITNET_CLI", cli), ("BITNET_LOAD", load)):
        if not path or not os.path.exists(path):
            print(f"FAIL: {name}={path!r} is not a binary")
            return 1
    c = Checker()
    tmp = tempfile.mkdtemp(prefix="bitnet_cli_test_")
    proc = None
    try:
        repo = os.path.join(tmp, "repo")
        os.mkdir(repo)
        token_file = os.path.join(tmp, "token")
        with open(token_file, "w") as f:
            f.write("cli-test-token-0123456789abcdef\n")
        r = subprocess.run([server, "--demo_model=small",
                            f"--write_demo_model={repo}/small.safetensors"],
                           capture_output=True, text=True)
        if not c.check(r.returncode == 0, f"write the small demo model: {r.stderr!r}"):
            return 1
        proc, port, metrics_port, log_path = start_server(server, tmp, repo, token_file)
        if not c.check(port is not None, "server started"):
            return 1
        check_cli(c, cli, port, tmp, token_file, fixtures)
        check_load(c, load, port, metrics_port, tmp)
        check_tls(c, server, cli, load, tmp)
        proc.send_signal(signal.SIGTERM)
        c.check(proc.wait(timeout=30) == 0, "server drained and exited 0")
        proc = None
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
            print("--- server log (tail)")
            print("".join(open(os.path.join(tmp, "server.log")).readlines()[-30:]))
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{c.checks - c.failures}/{c.checks} checks passed")
    return 1 if c.failures else 0


if __name__ == "__main__":
    sys.exit(main())

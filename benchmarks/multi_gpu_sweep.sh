#!/usr/bin/env bash
# Multi-GPU serving benchmark (issue 9): one bitnet-server process with one
# model instance per GPU, against the same server on one GPU. For each
# --device configuration (default: cuda:0, then cuda:0,cuda:1) it starts
# bitnet-server with the large demo model, sweeps bitnet-load's closed-loop
# concurrency (doubling) until throughput saturates, stops the server, and
# finally writes:
#
#   OUT_DIR/results.csv   one row per (config, concurrency) point
#   OUT_DIR/results.md    a table per config, the saturation summary (rows/s,
#                         speedup over the first config, p99 at equal load per
#                         GPU) and the GPU names
#   OUT_DIR/<config>/     server.log, per-point bitnet-load JSON, and the
#                         share of batch rows each instance computed
#
# Usage:
#   benchmarks/multi_gpu_sweep.sh BUNDLE_DIR OUT_DIR
# BUNDLE_DIR holds bitnet-server and bitnet-load (and the shared libraries
# scripts/make-bundle.sh copies next to them; a build tree's server/ and
# client/ directories work too).
#
# Requests: unary Infer (bitnet-load has no InferStream mode) with
# ROWS_PER_REQUEST rows each, FP16 on the wire, so that per-request host work
# (gRPC, protobuf, encoding) is amortized over many rows and the GPUs, not
# the host, are the bottleneck at saturation. Server and bitnet-load share
# the host; the load generator's CPU use is part of what is measured.
#
# Environment (defaults in brackets):
#   CONFIGS ["cuda:0 cuda:0,cuda:1"]  --device values, space-separated; the
#                            first is the baseline of the speedup
#   DEMO_MODEL [large]       large (4096->11008->4096), small (64->128->32) or deep
#                            (large as 24 blocks: GPU-bound, see benchmarks/RESULTS.md)
#   ROWS_PER_REQUEST [32]    rows per Infer request
#   DTYPE [fp16]             input dtype on the wire (fp32, fp16, bf16)
#   OUTPUT_DTYPE []          output dtype asked for (fp32, fp16, bf16; empty:
#                            unset = fp32). fp16 + fp16 is fp16 end to end.
#   START_CONCURRENCY [4]    first point; each next point doubles it
#   MAX_CONCURRENCY [1024]   last point at most (times the config's devices)
#   SATURATION_GAIN [0.05]   stop after two points in a row that add less
#                            than this fraction to the best rows/s so far
#   DURATION [5s] WARMUP [2s] per point
#   CONNECTIONS_PER_DEVICE [8]  gRPC connections of bitnet-load per device of
#                            the config, so that "the same load per GPU" also
#                            means the same transport load per connection
#   CONNECTIONS []           a fixed connection count for every config instead
#   SERVER_FLAGS []          extra bitnet-server flags
#   SERVER_CPUS [] LOAD_CPUS []  taskset CPU lists for bitnet-server and
#                            bitnet-load (e.g. 0-15 and 16-31), so that the
#                            two do not compete for cores
# Needs python3 (standard library only) and, for the card names, nvidia-smi.
set -euo pipefail

if (($# != 2)); then
  echo "usage: $0 BUNDLE_DIR OUT_DIR" >&2
  exit 2
fi
bundle=$(cd "$1" && pwd)
out=$2
CONFIGS="${CONFIGS:-cuda:0 cuda:0,cuda:1}"
DEMO_MODEL="${DEMO_MODEL:-large}"
ROWS_PER_REQUEST="${ROWS_PER_REQUEST:-32}"
DTYPE="${DTYPE:-fp16}"
OUTPUT_DTYPE="${OUTPUT_DTYPE:-}"
START_CONCURRENCY="${START_CONCURRENCY:-4}"
MAX_CONCURRENCY="${MAX_CONCURRENCY:-1024}"
SATURATION_GAIN="${SATURATION_GAIN:-0.05}"
DURATION="${DURATION:-5s}"
WARMUP="${WARMUP:-2s}"
CONNECTIONS_PER_DEVICE="${CONNECTIONS_PER_DEVICE:-8}"
CONNECTIONS="${CONNECTIONS:-}"
SERVER_FLAGS="${SERVER_FLAGS:-}"

# shellcheck source=benchmarks/server_launch.sh
source "$(dirname "$0")/server_launch.sh"
prepare_run "$bundle" "$out"
[[ -f "$out/gpu.txt" ]] && sed 's/^/multi_gpu_sweep: GPU /' "$out/gpu.txt" >&2

scrape() {  # the server's /metrics page into $1
  python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' \
    "http://127.0.0.1:$metrics_port/metrics" > "$1"
}
server_pid=
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2> /dev/null; then
    kill -TERM "$server_pid"; wait "$server_pid" || true
  fi
}
trap cleanup EXIT

for config in $CONFIGS; do
  dir="$out/${config//[:,]/_}"
  mkdir -p "$dir"
  echo "$config" > "$dir/config.txt"
  echo "multi_gpu_sweep: --device=$config: starting bitnet-server" >&2
  # shellcheck disable=SC2086  # SERVER_FLAGS is a list of flags
  launch_server "$server_bin" "$dir/server.log" \
    --device="$config" --demo_model="$DEMO_MODEL" --max_queue_rows=1048576 \
    --max_request_rows="$((ROWS_PER_REQUEST > 512 ? ROWS_PER_REQUEST : 512))" \
    --max_batch_rows="$((ROWS_PER_REQUEST > 512 ? ROWS_PER_REQUEST : 512))" \
    $SERVER_FLAGS
  metrics_url="http://127.0.0.1:$metrics_port/metrics"

  # The cap grows with the devices, so that every config reaches the same
  # load per device.
  instances=$(($(tr -cd ',' <<< "$config" | wc -c) + 1))
  connections=${CONNECTIONS:-$((CONNECTIONS_PER_DEVICE * instances))}
  echo "$connections" > "$dir/connections.txt"
  concurrency=$START_CONCURRENCY
  best=0
  flat=0
  while ((concurrency <= MAX_CONCURRENCY * instances)); do
    scrape "$dir/metrics-before.txt"
    ${LOAD_CPUS:+taskset -c "$LOAD_CPUS"} "$load_bin" --address="127.0.0.1:$port" --model=demo --concurrency="$concurrency" \
      --duration="$DURATION" --warmup="$WARMUP" --connections="$connections" \
      --rows_per_request="$ROWS_PER_REQUEST" --dtype="$DTYPE" ${OUTPUT_DTYPE:+--output_dtype="$OUTPUT_DTYPE"} \
      --metrics_url="$metrics_url" --preferred_batch_rows="${preferred:-128}" \
      --max_error_rate=1 --json="$dir/point-$concurrency.json" >&2
    # Server-side latency of the same interval (it includes the warm-up).
    scrape "$dir/metrics-after.txt"
    python3 "$(dirname "$0")/server_latency.py" "$dir/metrics-before.txt" \
      "$dir/metrics-after.txt" demo > "$dir/server-$concurrency.json"
    # Saturated: two points in a row that add < SATURATION_GAIN to the best.
    read -r best flat < <(python3 - "$dir/point-$concurrency.json" "$best" "$flat" \
      "$SATURATION_GAIN" <<'PY'
import json, sys
point = json.load(open(sys.argv[1]))["points"][0]
best, flat, gain = float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rate = point["rows_per_second"]
flat = flat + 1 if rate < best * (1 + gain) else 0
print(max(best, rate), flat)
PY
)
    if ((flat >= 2)); then break; fi
    concurrency=$((concurrency * 2))
  done
  # How the batches were spread over the instances (routing balance).
  python3 - "$metrics_url" > "$dir/instances.json" <<'PY'
import json, re, sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=10).read().decode()
rows, batches, healthy = {}, {}, {}
for line in text.splitlines():
    m = re.match(r'(bitnet_batch_rows_sum|bitnet_batch_rows_count|bitnet_instance_healthy)'
                 r'\{device="([^"]*)",model="demo"\} (\S+)', line)
    if not m:
        continue
    target = {"bitnet_batch_rows_sum": rows, "bitnet_batch_rows_count": batches,
              "bitnet_instance_healthy": healthy}[m.group(1)]
    target[m.group(2)] = float(m.group(3))
total = sum(rows.values()) or 1
print(json.dumps({d: {"rows": rows[d], "batches": batches.get(d, 0),
                      "share": rows[d] / total, "healthy": healthy.get(d)}
                  for d in sorted(rows)}))
PY
  kill -TERM "$server_pid"; wait "$server_pid" || true
  server_pid=
done

python3 - "$out" "$CONFIGS" "$ROWS_PER_REQUEST" "$DTYPE" "$CONNECTIONS" "$DURATION" "$DEMO_MODEL" \
  "${OUTPUT_DTYPE:-fp32}" <<'PY'
import csv, glob, json, os, sys
out, configs, rpr, dtype, connections, duration, model, out_dtype = sys.argv[1:9]
configs = configs.split()
gpus = {}
if os.path.exists(os.path.join(out, "gpu.txt")):
    for line in open(os.path.join(out, "gpu.txt")):
        fields = [f.strip() for f in line.split(",")]
        if len(fields) >= 2:
            gpus[fields[0]] = fields[1]

def devices(config):
    return config.split(",")

rows_by_config = {}
for config in configs:
    d = os.path.join(out, config.replace(":", "_").replace(",", "_"))
    points = []
    for path in glob.glob(os.path.join(d, "point-*.json")):
        point = json.load(open(path))["points"][0]
        server = os.path.join(d, f"server-{point['concurrency']:g}.json")
        point["server"] = json.load(open(server)) if os.path.exists(server) else {}
        points.append(point)
    points.sort(key=lambda p: p["concurrency"])
    rows_by_config[config] = points

with open(os.path.join(out, "results.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["config", "instances", "concurrency", "rows_per_request", "requests_per_second",
                "rows_per_second", "p50_ms", "p90_ms", "p99_ms", "mean_batch_rows", "errors"])
    for config, points in rows_by_config.items():
        for p in points:
            w.writerow([config, len(devices(config)), p["concurrency"], p["rows_per_request"],
                        f"{p['requests_per_second']:.1f}", f"{p['rows_per_second']:.0f}",
                        f"{p['latency_ms']['p50']:.2f}", f"{p['latency_ms']['p90']:.2f}",
                        f"{p['latency_ms']['p99']:.2f}",
                        "" if p["mean_batch_rows"] is None else f"{p['mean_batch_rows']:.1f}",
                        p["errors"]])

def card(device):
    if device.startswith("cuda:"):
        return gpus.get(device.split(":")[1], device)
    return device

md = []
md.append(f"Demo model `{model}`, unary Infer, {rpr} rows per request ({dtype} on the wire, {out_dtype} answers), "
          f"closed loop, {connections or 'per config (below)'} connections, {duration} per point, server and "
          f"bitnet-load on the same host; concurrency doubled until two points in a row "
          f"added < 5% rows/s.\n")
if gpus:
    md.append("Cards: " + "; ".join(f"cuda:{i} {n}" for i, n in sorted(gpus.items())) + "\n")
for config, points in rows_by_config.items():
    conn_file = os.path.join(out, config.replace(":", "_").replace(",", "_"), "connections.txt")
    conns = open(conn_file).read().strip() if os.path.exists(conn_file) else connections
    md.append(f"### `--device={config}` ({', '.join(card(x) for x in devices(config))}), "
              f"{conns} connections\n")
    md.append("| concurrency | requests/s | rows/s | p50 ms | p99 ms | server p99 ms | "
              "server > 25 ms | batch compute p99 ms | mean batch rows | errors |")
    md.append("|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    def opt(value, fmt):
        return "n/a" if value is None else format(value, fmt)
    for p in points:
        mb = p["mean_batch_rows"]
        srv = p["server"]
        compute = ", ".join(f"{d} {v:.1f}" for d, v in srv.get("compute_p99_ms", {}).items()
                            if v is not None) or "n/a"
        md.append(f"| {p['concurrency']:g} | {p['requests_per_second']:.0f} | "
                  f"{p['rows_per_second']:.0f} | {p['latency_ms']['p50']:.2f} | "
                  f"{p['latency_ms']['p99']:.2f} | {opt(srv.get('request_p99_ms'), '.1f')} | "
                  f"{opt(srv.get('request_over_25ms'), '.2%')} | {compute} | "
                  f"{'n/a' if mb is None else f'{mb:.1f}'} | {p['errors']} |")
    inst = os.path.join(out, config.replace(":", "_").replace(",", "_"), "instances.json")
    if os.path.exists(inst):
        shares = json.load(open(inst))
        md.append("\nBatch rows per instance (whole run): " + ", ".join(
            f"{d} {v['share'] * 100:.1f}% ({v['batches']:.0f} batches)" for d, v in shares.items()))
    md.append("")

md.append("### Saturation\n")
md.append("| config | instances | best rows/s | at concurrency | p99 ms there | speedup | "
          "p99 ms at the baseline's saturation load per device |")
md.append("|---|---:|---:|---:|---:|---:|---:|")
base = None
base_conc = None
for config, points in rows_by_config.items():
    if not points:
        continue
    best = max(points, key=lambda p: p["rows_per_second"])
    n = len(devices(config))
    if base is None:
        base, base_conc = best["rows_per_second"], best["concurrency"]
    # The same load per device as the baseline's best point: concurrency x n.
    same = [p for p in points if p["concurrency"] == base_conc * n]
    same_text = (f"{same[0]['latency_ms']['p99']:.2f} (concurrency {same[0]['concurrency']:g})"
                 if same else "n/a")
    md.append(f"| `{config}` | {n} | {best['rows_per_second']:.0f} | {best['concurrency']:g} | "
              f"{best['latency_ms']['p99']:.2f} | {best['rows_per_second'] / base:.2f}x | "
              f"{same_text} |")

# Latency at equal load per device: the baseline at concurrency C against
# each other config at C x (its devices / the baseline's devices).
if len(rows_by_config) > 1:
    names = list(rows_by_config)
    base_points = rows_by_config[names[0]]
    base_n = len(devices(names[0]))
    md.append("\n### Equal load per device\n")
    header = f"| concurrency per device | `{names[0]}` rows/s | p99 ms |"
    rule = "|---:|---:|---:|"
    for other in names[1:]:
        header += f" `{other}` rows/s | p99 ms | rows/s ratio |"
        rule += "---:|---:|---:|"
    md.append(header)
    md.append(rule)
    for bp in base_points:
        line = (f"| {bp['concurrency'] / base_n:g} | {bp['rows_per_second']:.0f} | "
                f"{bp['latency_ms']['p99']:.2f} |")
        for other in names[1:]:
            scale = len(devices(other)) / base_n
            match = [p for p in rows_by_config[other]
                     if p["concurrency"] == bp["concurrency"] * scale]
            if match:
                m = match[0]
                line += (f" {m['rows_per_second']:.0f} | {m['latency_ms']['p99']:.2f} | "
                         f"{m['rows_per_second'] / bp['rows_per_second']:.2f}x |")
            else:
                line += " n/a | n/a | n/a |"
        md.append(line)
open(os.path.join(out, "results.md"), "w").write("\n".join(md) + "\n")
print("\n".join(md))
PY
echo "multi_gpu_sweep: results in $out (results.md, results.csv, per-config server logs and points)" >&2

#!/usr/bin/env bash
# Multi-GPU latency A/B (issue 9, "p99 no worse at the same per-GPU load"):
# several bitnet-server configurations run side by side, and bitnet-load
# visits them in turn, round after round, at the same number of closed-loop
# clients per device. Interleaving the rounds spreads slow drift and noisy
# neighbours over every configuration alike, where multi_gpu_sweep.sh (one
# configuration after the other) lets them land on one of them; the servers
# start once, so each round costs only its load run.
#
#   benchmarks/multi_gpu_ab.sh BUNDLE_DIR OUT_DIR
#
# BUNDLE_DIR holds bitnet-server and bitnet-load (a scripts/make-bundle.sh
# bundle, or a build tree's server/ and client/ directories).
#
# Environment (defaults in brackets):
#   CONFIGS ["one|cuda:0 two|cuda:0,cuda:1 two-soonest|cuda:0,cuda:1|--connection_affinity=false"]
#                     space-separated NAME|DEVICES[|SERVER FLAG...] (flags
#                     separated by '|'); the first is the baseline
#   PER_DEVICE [16]   closed-loop clients per device of a configuration; a
#                     space-separated list runs each load in turn
#   ROUNDS [4]        rounds; each visits every configuration once
#   DEMO_MODEL [deep] ROWS_PER_REQUEST [32] DTYPE [fp16] OUTPUT_DTYPE [fp16]
#   DURATION [5s] WARMUP [1s] per visit
#   CONNECTIONS_PER_DEVICE [8]
#   SERVER_CPUS [] LOAD_CPUS []  taskset CPU lists (as multi_gpu_sweep.sh)
# Writes OUT_DIR/results.csv (one row per visit), OUT_DIR/results.md (per
# load and configuration: the median rows/s, the median and range of the
# client's p99 and of the server's own request p99, and mean batch rows)
# and each server's log.
set -euo pipefail

if (($# != 2)); then
  echo "usage: $0 BUNDLE_DIR OUT_DIR" >&2
  exit 2
fi
bundle=$(cd "$1" && pwd)
out=$2
CONFIGS="${CONFIGS:-one|cuda:0 two|cuda:0,cuda:1 two-soonest|cuda:0,cuda:1|--connection_affinity=false}"
PER_DEVICE="${PER_DEVICE:-16}"
ROUNDS="${ROUNDS:-4}"
DEMO_MODEL="${DEMO_MODEL:-deep}"
ROWS_PER_REQUEST="${ROWS_PER_REQUEST:-32}"
DTYPE="${DTYPE:-fp16}"
OUTPUT_DTYPE="${OUTPUT_DTYPE:-fp16}"
DURATION="${DURATION:-5s}"
WARMUP="${WARMUP:-1s}"
CONNECTIONS_PER_DEVICE="${CONNECTIONS_PER_DEVICE:-8}"

# shellcheck source=benchmarks/server_launch.sh
source "$(dirname "$0")/server_launch.sh"
prepare_run "$bundle" "$out"

declare -A pid_of port_of metrics_of devices_of
cleanup() {
  for pid in "${pid_of[@]}"; do kill -TERM "$pid" 2> /dev/null || true; done
  wait || true
}
trap cleanup EXIT

# Start every server at once (building the deep demo model takes a while),
# then wait for each.
names=()
for config in $CONFIGS; do
  IFS='|' read -r -a parts <<< "$config"
  name=${parts[0]}
  devices=${parts[1]:?"multi_gpu_ab: $config: expected NAME|DEVICES[|FLAG...]"}
  names+=("$name")
  devices_of[$name]=$devices
  echo "multi_gpu_ab: starting $name: --device=$devices ${parts[*]:2}" >&2
  start_server "$server_bin" "$out/$name.log" --device="$devices" --demo_model="$DEMO_MODEL" \
    --max_queue_rows=1048576 "${parts[@]:2}"
  pid_of[$name]=$server_pid
done
for name in "${names[@]}"; do
  await_server "$out/$name.log" "${pid_of[$name]}"
  port_of[$name]=$port
  metrics_of[$name]=$metrics_port
done

scrape() {  # NAME FILE: that server's /metrics page
  python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' \
    "http://127.0.0.1:${metrics_of[$1]}/metrics" > "$2"
}
for per in $PER_DEVICE; do
  for round in $(seq 1 "$ROUNDS"); do
    for name in "${names[@]}"; do
      n=$(($(tr -cd ',' <<< "${devices_of[$name]}" | wc -c) + 1))
      echo "multi_gpu_ab: $per per device, round $round: $name ($((per * n)) clients)" >&2
      scrape "$name" "$out/before.txt"
      ${LOAD_CPUS:+taskset -c "$LOAD_CPUS"} "$load_bin" --address="127.0.0.1:${port_of[$name]}" \
        --model=demo --concurrency=$((per * n)) --connections=$((CONNECTIONS_PER_DEVICE * n)) \
        --duration="$DURATION" --warmup="$WARMUP" --rows_per_request="$ROWS_PER_REQUEST" \
        --dtype="$DTYPE" --output_dtype="$OUTPUT_DTYPE" \
        --metrics_url="http://127.0.0.1:${metrics_of[$name]}/metrics" --max_error_rate=1 \
        --json="$out/$name-$per-$round.json" > /dev/null 2>> "$out/load.log"
      scrape "$name" "$out/after.txt"
      python3 "$(dirname "$0")/server_latency.py" "$out/before.txt" "$out/after.txt" demo \
        > "$out/$name-$per-$round-server.json"
    done
  done
done

python3 - "$out" "$ROUNDS" "$PER_DEVICE" "${names[@]}" <<'PY'
import json, os, statistics, sys
out, rounds, loads, names = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4:]
rows = []
for per in loads:
    for name in names:
        for r in range(1, rounds + 1):
            point = json.load(open(f"{out}/{name}-{per}-{r}.json"))["points"][0]
            server = json.load(open(f"{out}/{name}-{per}-{r}-server.json"))
            rows.append({"per_device": int(per), "config": name, "round": r,
                         "clients": point["concurrency"],
                         "rows_per_second": round(point["rows_per_second"]),
                         "p50_ms": round(point["latency_ms"]["p50"], 2),
                         "p99_ms": round(point["latency_ms"]["p99"], 2),
                         "server_p99_ms": server.get("request_p99_ms"),
                         "batch_rows": round(point.get("mean_batch_rows") or 0, 1)})
with open(f"{out}/results.csv", "w") as f:
    f.write(",".join(rows[0]) + "\n")
    for row in rows:
        f.write(",".join(str(v) for v in row.values()) + "\n")
gpus = open(f"{out}/gpu.txt").read().strip().replace("\n", "; ") if os.path.exists(f"{out}/gpu.txt") else "n/a"
lines = [f"{rounds} interleaved rounds per load; GPUs: {gpus}", "",
         "| clients per device | config | rows/s per device (median) | client p99 ms: median (min-max) | server p99 ms: median (min-max) | p50 ms (median) | batch rows (median) |",
         "|---:|---|---:|---|---|---:|---:|"]
for per in loads:
    for name in names:
        mine = [r for r in rows if r["config"] == name and r["per_device"] == int(per)]
        devices = mine[0]["clients"] / int(per)
        def span(key):
            v = [r[key] for r in mine if r[key] is not None]
            return f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})" if v else "n/a"
        lines.append(f"| {per} | {name} | {statistics.median(r['rows_per_second'] for r in mine) / devices:,.0f} | "
                     f"{span('p99_ms')} | {span('server_p99_ms')} | "
                     f"{statistics.median(r['p50_ms'] for r in mine):.2f} | "
                     f"{statistics.median(r['batch_rows'] for r in mine):.0f} |")
open(f"{out}/results.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY

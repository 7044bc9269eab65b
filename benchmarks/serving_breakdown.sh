#!/usr/bin/env bash
# Where the time goes at one load point: runs bitnet-server and bitnet-load
# (closed loop, one concurrency) side by side and reports, over the measured
# window only:
#   - end-to-end rows/s and requests/s (bitnet-load),
#   - the server's mean batch rows and mean run time per batch (the worker's
#     Forward: host<->device copies + kernels), from bitnet_batch_rows and
#     bitnet_batch_compute_seconds,
#   - device-path busy fraction = time inside Forward / wall time (1.0 = the
#     worker never waits for rows: the device path is the bottleneck),
#   - CPU cores used by the server and by the load client (/proc/PID/stat),
#     and the host's core count (near it = the host CPU is the bottleneck),
#   - server CPU microseconds per request.
#
#   benchmarks/serving_breakdown.sh [CONCURRENCY]          # default 1024
#   RATE=37000 benchmarks/serving_breakdown.sh              # open loop instead
#     (Poisson arrivals at RATE requests/s): also checks issue 6's latency
#     goal, p99 <= max_queue_delay + 3 x the mean batch compute time
# Environment: BUILD_DIR [build], DEVICE [cuda:0], DEMO_MODEL [large],
#   DURATION [6s] (measured), CONNECTIONS [16], ROWS [1] rows per request,
#   DTYPE [fp32] input dtype on the wire, OUTPUT_DTYPE [] output dtype asked
#   for (empty: unset = fp32),
#   SERVER_FLAGS [], OUT_DIR [breakdown-<date>].
set -euo pipefail
cd "$(dirname "$0")/.."
concurrency="${1:-1024}"
BUILD_DIR="${BUILD_DIR:-build}"
DEVICE="${DEVICE:-cuda:0}"
DEMO_MODEL="${DEMO_MODEL:-large}"
DURATION="${DURATION:-6s}"
CONNECTIONS="${CONNECTIONS:-16}"
ROWS="${ROWS:-1}"
DTYPE="${DTYPE:-fp32}"
OUTPUT_DTYPE="${OUTPUT_DTYPE:-}"
SERVER_FLAGS="${SERVER_FLAGS:-}"
OUT_DIR="${OUT_DIR:-breakdown-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT_DIR"
server_bin="$BUILD_DIR/server/bitnet-server"
load_bin="$BUILD_DIR/client/bitnet-load"

server_pid=
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2> /dev/null; then
    kill -TERM "$server_pid"; wait "$server_pid" || true
  fi
}
trap cleanup EXIT
# shellcheck source=benchmarks/server_launch.sh
source benchmarks/server_launch.sh
# shellcheck disable=SC2086  # SERVER_FLAGS is a list of flags
launch_server "$server_bin" "$OUT_DIR/server.log" \
  --device="$DEVICE" --demo_model="$DEMO_MODEL" --max_queue_rows=1048576 $SERVER_FLAGS

# The load client warms up for 2 s and then measures for DURATION; the
# window here is the middle 80% of that, so both processes are busy
# throughout (rows/s and latencies below come from the server's metrics in
# the window, bitnet-load's summary is in load.txt).
window=$(python3 -c "import re;d='$DURATION';m=re.fullmatch(r'([0-9.]+)(ms|s|m)',d);print(0.8*float(m[1])*{'ms':1e-3,'s':1,'m':60}[m[2]])")
if [[ -n "${RATE:-}" ]]; then load_mode=(--rate="$RATE"); concurrency="rate $RATE/s"
else load_mode=(--concurrency="$concurrency"); fi
"$load_bin" --address="127.0.0.1:$port" --model=demo "${load_mode[@]}" \
  --duration="$DURATION" --warmup=2s --connections="$CONNECTIONS" \
  --rows_per_request="$ROWS" --dtype="$DTYPE" ${OUTPUT_DTYPE:+--output_dtype="$OUTPUT_DTYPE"} --max_error_rate=1 --json="$OUT_DIR/load.json" \
  > "$OUT_DIR/load.txt" 2>&1 &
load_pid=$!
snap() {  # label: time, CPU ticks of both processes, /metrics (cheap: no python)
  date +%s.%N > "$OUT_DIR/$1.time"
  awk '{print $14 + $15}' "/proc/$server_pid/stat" > "$OUT_DIR/$1.server_ticks"
  awk '{print $14 + $15}' "/proc/$load_pid/stat" > "$OUT_DIR/$1.load_ticks" 2> /dev/null ||
    echo nan > "$OUT_DIR/$1.load_ticks"
  exec 3<> "/dev/tcp/127.0.0.1/$metrics_port"
  printf 'GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
  cat <&3 > "$OUT_DIR/$1.metrics"
  exec 3>&-
}
sleep 2.5  # warm-up (2 s) and a margin
snap start
sleep "$window"  # 80% of the load's measured window, well inside it
snap end
wait "$load_pid" || true

delay=$(sed -n 's/.*event=server_started .* max_queue_delay=\([^ ]*\).*/\1/p' "$OUT_DIR/server.log")
python3 - "$OUT_DIR" "$(getconf CLK_TCK)" "$(nproc)" "$concurrency" "$DEVICE" "${delay:-2ms}" <<'PY'
import json, os, re, sys
out, tck, cores, conc, device, delay = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
def read(name): return open(os.path.join(out, name)).read().strip()
def metric(text, name):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total
wall = float(read("end.time")) - float(read("start.time"))
m0, m1 = read("start.metrics"), read("end.metrics")
d = lambda n: metric(m1, n) - metric(m0, n)
batches = d("bitnet_batch_rows_count")
rows = d("bitnet_batch_rows_sum")
compute = d("bitnet_batch_compute_seconds_sum")
requests = d("bitnet_requests_total")
server_cores = (float(read("end.server_ticks")) - float(read("start.server_ticks"))) / tck / wall
load_cores = (float(read("end.load_ticks")) - float(read("start.load_ticks"))) / tck / wall
load = json.load(open(os.path.join(out, "load.json")))["points"][0]
print(f"concurrency {conc}, device {device}, {wall:.1f} s window, host {cores} cores")
answered = d("bitnet_rows_total")
print(f"end to end: {answered / wall:.0f} rows/s answered, {requests / wall:.0f} req/s (bitnet-load over its "
      f"whole window: {load['rows_per_second']:.0f} rows/s, p50 {load['latency_ms']['p50']:.2f} ms, "
      f"p99 {load['latency_ms']['p99']:.2f} ms)")
if batches:
    print(f"server: {rows / wall:.0f} rows/s in {batches / wall:.0f} batches/s, mean batch {rows / batches:.1f} rows, "
          f"mean Forward {1e3 * compute / batches:.3f} ms/batch -> device path alone {rows / compute:.0f} rows/s")
    print(f"device-path busy fraction: {compute / wall:.2f}")
    m = re.fullmatch(r"([0-9.]+)(us|ms|s)", delay)
    delay_ms = float(m[1]) * {"us": 1e-3, "ms": 1, "s": 1e3}[m[2]] if m else float("nan")
    bound = delay_ms + 3e3 * compute / batches
    p99 = load["latency_ms"]["p99"]
    print(f"latency goal: p99 {p99:.2f} ms vs max_queue_delay {delay_ms:g} ms + 3 x {1e3 * compute / batches:.3f} ms "
          f"= {bound:.2f} ms: {'met' if p99 <= bound else 'missed'}")
def quantile(name, q):
    # Upper bound of the histogram bucket holding quantile q over the window.
    buckets = {}
    for text, sign in ((m1, 1), (m0, -1)):
        for line in text.splitlines():
            if line.startswith(name + "_bucket{"):
                le = re.search(r'le="([^"]+)"', line)[1]
                buckets[le] = buckets.get(le, 0) + sign * float(line.rsplit(" ", 1)[1])
    bounds = sorted(((float(le), c) for le, c in buckets.items()), key=lambda x: x[0])
    if not bounds or bounds[-1][1] <= 0:
        return float("nan")
    for le, c in bounds:
        if c >= q * bounds[-1][1]:
            return le
    return float("inf")
print(f"server-side p99 (histogram bucket bound): request {1e3 * quantile('bitnet_request_duration_seconds', 0.99):g} ms, "
      f"queue {1e3 * quantile('bitnet_queue_duration_seconds', 0.99):g} ms, "
      f"batch Forward {1e3 * quantile('bitnet_batch_compute_seconds', 0.99):g} ms (p99 of batches)")
print(f"CPU: server {server_cores:.2f} cores, load client {load_cores:.2f} cores, "
      f"together {server_cores + load_cores:.2f} of {cores}")
if requests:
    print(f"server CPU per request: {1e6 * server_cores * wall / requests:.1f} us; "
          f"client CPU per request: {1e6 * load_cores * wall / requests:.1f} us")
PY

# Sourced by the benchmark scripts: finds the binaries, starts bitnet-server
# on ephemeral ports and waits until it serves (the large demo models take
# seconds to build).
#
#   find_bin DIR NAME SUBDIR    DIR/NAME (a flat bundle made by
#                               scripts/make-bundle.sh) or DIR/SUBDIR/NAME (a
#                               build tree); exits 2 naming it if neither
#   prepare_run BUNDLE OUT      for the multi-GPU scripts: sets server_bin and
#                               load_bin (find_bin), out (OUT, made, absolute)
#                               and LD_LIBRARY_PATH (BUNDLE first), checks
#                               for python3, and writes OUT/gpu.txt (the GPUs,
#                               from nvidia-smi, when there is one)
#   launch_server BINARY LOG [FLAG...]
#                               start_server then await_server
#   start_server BINARY LOG [FLAG...]
#                               starts it in the background: sets server_pid
#   await_server LOG PID        waits until it serves: sets port, metrics_port
#                               and preferred (its preferred_batch_rows), or
#                               prints the log and exits 1 if it did not start
# The caller's trap stops the servers (kill -TERM "$server_pid").
# SERVER_CPUS (a taskset CPU list, e.g. 0-15) pins the server to those CPUs,
# so that a load generator on the same host cannot take its cores.
# The functions set variables for the caller (server_pid, port, ...).
# shellcheck shell=bash disable=SC2034

find_bin() {
  local dir=$1 name=$2 sub=$3
  if [[ -x "$dir/$name" ]]; then
    echo "$dir/$name"
  elif [[ -x "$dir/$sub/$name" ]]; then
    echo "$dir/$sub/$name"
  else
    echo "$(basename "$0"): $name not found in $dir (or $dir/$sub)" >&2
    exit 2
  fi
}

prepare_run() {
  local bundle=$1
  server_bin=$(find_bin "$bundle" bitnet-server server)
  load_bin=$(find_bin "$bundle" bitnet-load client)
  command -v python3 > /dev/null || { echo "$(basename "$0"): python3 is needed" >&2; exit 2; }
  export LD_LIBRARY_PATH="$bundle${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  mkdir -p "$2"
  out=$(cd "$2" && pwd)
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader \
      > "$out/gpu.txt" 2> /dev/null || true
  fi
}

start_server() {
  local bin=$1 log=$2
  shift 2
  # taskset execs the server, so $! is the server's pid either way.
  ${SERVER_CPUS:+taskset -c "$SERVER_CPUS"} "$bin" --address=127.0.0.1 --port=0 --metrics_address=127.0.0.1 --metrics_port=0 \
    "$@" > "$log" 2>&1 &
  server_pid=$!
}

await_server() {
  local log=$1 pid=$2
  port='' metrics_port=''
  local started='s/.*event=server_started .* port=\([0-9]*\) metrics_port=\([0-9]*\).*'
  for _ in $(seq 1 3000); do
    if grep -q "event=serving" "$log"; then
      port=$(sed -n "$started/\1/p" "$log")
      metrics_port=$(sed -n "$started/\2/p" "$log")
      break
    fi
    kill -0 "$pid" 2> /dev/null || break
    sleep 0.1
  done
  if [[ -z "$port" ]]; then
    echo "$(basename "$0"): bitnet-server (log $log) did not start:" >&2
    cat "$log" >&2
    exit 1
  fi
  preferred=$(sed -n 's/.*event=server_started .* preferred_batch_rows=\([0-9]*\).*/\1/p' "$log")
}

launch_server() {
  local bin=$1 log=$2
  start_server "$@"
  await_server "$log" "$server_pid"
}

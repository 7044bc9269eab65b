# Sourced by the benchmark scripts: starts bitnet-server on ephemeral ports
# and waits until it serves (the large demo model takes seconds to build).
#
#   launch_server BINARY LOG [FLAG...]
# sets server_pid, port, metrics_port and preferred (its
# preferred_batch_rows), or prints the log and exits 1 if it did not start.
# The caller's trap stops it (kill -TERM "$server_pid").
# SERVER_CPUS (a taskset CPU list, e.g. 0-15) pins the server to those CPUs,
# so that a load generator on the same host cannot take its cores.
launch_server() {
  local bin=$1 log=$2
  shift 2
  # taskset execs the server, so $! is the server's pid either way.
  ${SERVER_CPUS:+taskset -c "$SERVER_CPUS"} "$bin" --address=127.0.0.1 --port=0 --metrics_address=127.0.0.1 --metrics_port=0 \
    "$@" > "$log" 2>&1 &
  server_pid=$!
  port='' metrics_port=''
  local started='s/.*event=server_started .* port=\([0-9]*\) metrics_port=\([0-9]*\).*'
  for _ in $(seq 1 1800); do
    if grep -q "event=serving" "$log"; then
      port=$(sed -n "$started/\1/p" "$log")
      metrics_port=$(sed -n "$started/\2/p" "$log")
      break
    fi
    kill -0 "$server_pid" 2> /dev/null || break
    sleep 0.1
  done
  if [[ -z "$port" ]]; then
    echo "$(basename "$0"): bitnet-server $* did not start:" >&2
    cat "$log" >&2
    exit 1
  fi
  preferred=$(sed -n 's/.*event=server_started .* preferred_batch_rows=\([0-9]*\).*/\1/p' "$log")
}

#!/bin/sh
# CTest client_consumer: install the bitnet_client component of a build tree
# into a temporary prefix, build tests/consumer against it with
# find_package(bitnet), run it offline and against a spawned bitnet-server.
#   run_test.sh BUILD_DIR CONSUMER_SOURCE_DIR BITNET_SERVER CMAKE GENERATOR
set -eu
build_dir=$1
source_dir=$2
server=$3
cmake=$4
generator=$5

tmp=$(mktemp -d "${TMPDIR:-/tmp}/bitnet_consumer.XXXXXX")
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

echo "== install the client component into $tmp/prefix"
"$cmake" --install "$build_dir" --component bitnet_client --prefix "$tmp/prefix"
test -f "$tmp/prefix/lib/cmake/bitnet/bitnetConfig.cmake" || \
  test -f "$tmp/prefix/lib64/cmake/bitnet/bitnetConfig.cmake" || \
  { echo "FAIL: bitnetConfig.cmake not installed"; exit 1; }
test -f "$tmp/prefix/include/client/client.h" || { echo "FAIL: client.h not installed"; exit 1; }
test -f "$tmp/prefix/include/bitnet/v1/inference.pb.h" || { echo "FAIL: generated headers not installed"; exit 1; }

echo "== configure and build tests/consumer against the installed package"
"$cmake" -S "$source_dir" -B "$tmp/build" -G "$generator" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$tmp/prefix"
"$cmake" --build "$tmp/build" -j 2

echo "== run offline"
"$tmp/build/consumer"

echo "== run against bitnet-server (small demo model, loopback)"
"$server" --demo_model=small --device=cpu --cpu_threads=1 --address=127.0.0.1 --port=0 \
  --metrics_port=-1 > "$tmp/server.log" 2>&1 &
server_pid=$!
port=
i=0
while [ $i -lt 300 ]; do
  if grep -q "event=serving" "$tmp/server.log" 2>/dev/null; then
    port=$(sed -n 's/.*event=serving port=\([0-9]*\).*/\1/p' "$tmp/server.log" | head -n 1)
    break
  fi
  if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
  sleep 0.1
  i=$((i + 1))
done
if [ -z "$port" ]; then
  echo "FAIL: bitnet-server did not start:"; cat "$tmp/server.log"; exit 1
fi
"$tmp/build/consumer" "127.0.0.1:$port"
echo "PASS"

#!/usr/bin/env bash
# Side-by-side benchmark: the raw TCP floor (limits.c), drpc, and PyTorch RPC
# (when Debian's python3-torch is installed), in one run on one machine.
# Usage: bench/run.sh [OUT_DIR]   (default: bench/out)
# The peers' programs come from ../shared/bench beside the checkout, or from
# $DRPC_PEERS.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
out=${1:-$here/out}
peers=${DRPC_PEERS:-$top/../shared/bench}
mkdir -p "$out"
drpc=${DRPC_BIN:-$top/build/drpc}
[ -x "$drpc" ] || { echo "build first: make" >&2; exit 1; }

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
echo "cpu: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"

if [ -f "$peers/limits.c" ]; then
  cc -O2 -o "$out/limits" "$peers/limits.c"
  echo "== raw TCP floor (limits.c)"
  "$out/limits" | tee "$out/limits.txt"
fi

floor=$(dirname "$drpc")/bench/drpc_echo_floor
if [ -x "$floor" ]; then
  echo "== raw TCP echo floor (bench/echo_floor.c)"
  "$floor" | tee "$out/echo_floor.txt"
fi

echo "== drpc bench"
"$drpc" bench --json | tee "$out/drpc.json"

if [ -f "$peers/torch_rpc_peer.py" ] && /usr/bin/python3 -c "import torch" 2>/dev/null; then
  echo "== PyTorch RPC (torch_rpc_peer.py --cpu)"
  (cd "$out" && timeout 900 /usr/bin/python3 "$peers/torch_rpc_peer.py" "$out/torch.json" --cpu >/dev/null 2>&1) \
    && cat "$out/torch.json" || echo "PyTorch peer failed"
fi

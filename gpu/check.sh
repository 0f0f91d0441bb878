#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU and the CUDA toolkit,
# builds drpc with its CUDA backend, runs the `gpu` tests against real
# CUDA, and measures CUDA tensor echo between two processes on one GPU
# (1 KiB .. 512 MiB) and no-op latency of the CUDA-enabled agent beside
# the CPU agent, then PyTorch's figures for the same in the same run.
#
#   gpu/check.sh            (run from anywhere; writes to $OUT or out/gpu)
#
# Machines without SQLite or cJSON headers: put the Debian packages in
# DRPC_DEBS (default .device/debs: libsqlite3-dev libsqlite3-0 libcjson-dev
# libcjson1, from `apt-get download`); they are unpacked into a private
# prefix. DRPC_TORCH_PEER names PyTorch's peer script (default
# .device/torch_rpc_peer.py; skipped when absent or when python3 has no
# torch). Every step is bounded; the summary is $OUT/summary.txt.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$root/out/gpu}
debs=${DRPC_DEBS:-$root/.device/debs}
peer=${DRPC_TORCH_PEER:-$root/.device/torch_rpc_peer.py}
build=${BUILD:-$root/build-gpu}
jobs=$(nproc 2>/dev/null || echo 4)
mkdir -p "$out"
log() { echo "== $*" | tee -a "$out/summary.txt"; }
: >"$out/summary.txt"

log "gpu/check.sh $(git -C "$root" rev-parse --short HEAD 2>/dev/null) $(date -u +%FT%TZ)"
nvidia-smi -L 2>&1 | tee -a "$out/summary.txt"

if [ -d "$debs" ] && ! { [ -f /usr/include/cjson/cJSON.h ] && [ -f /usr/include/sqlite3.h ]; }; then
  prefix=/tmp/drpc-deps
  mkdir -p "$prefix"
  for f in "$debs"/*.deb; do dpkg -x "$f" "$prefix"; done
  export CMAKE_PREFIX_PATH=$prefix/usr
  export LD_LIBRARY_PATH=$prefix/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
  log "dependencies unpacked from $debs into $prefix"
fi

gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
# Warnings of another compiler version must not stop a one-shot run; the
# build log keeps them.
if ! cmake -S "$root" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DDRPC_CUDA=ON -DDRPC_WERROR=OFF -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" \
  >"$out/configure.log" 2>&1; then
  log "configure FAILED"; tail -30 "$out/configure.log"; exit 1
fi
if ! timeout 600 cmake --build "$build" -j "$jobs" >"$out/build.log" 2>&1; then
  log "build FAILED"; grep -E 'error|Error' "$out/build.log" | head -30; exit 1
fi
log "build ok ($(grep -c 'warning:' "$out/build.log") warnings)"

rc=0
(cd "$build" && timeout 300 ctest -L gpu --output-on-failure -j4) >"$out/ctest_gpu.log" 2>&1 || rc=1
log "ctest -L gpu: $(grep -E 'tests passed|tests failed' "$out/ctest_gpu.log" | tail -1)"
grep -E 'backend|SKIP' "$out/ctest_gpu.log" | sort | uniq | head -10 | tee -a "$out/summary.txt"
[ $rc = 0 ] || grep -E 'FAIL|failed' "$out/ctest_gpu.log" | head -40 | tee -a "$out/summary.txt"
(cd "$build" && timeout 300 ctest -L unit -j8 -LE gpu) >"$out/ctest_unit.log" 2>&1 || rc=1
log "ctest -L unit: $(grep -E 'tests passed|tests failed' "$out/ctest_unit.log" | tail -1)"

drpc=$build/drpc
timeout 120 "$drpc" bench latency --json >"$out/bench_cpu.json" 2>"$out/bench_cpu.err" || rc=1
timeout 240 "$drpc" bench all --device cuda:0 --json >"$out/bench_cuda.json" 2>"$out/bench_cuda.err" || rc=1
timeout 120 "$drpc" bench bandwidth --device cuda:0 --channel cuda_staged --max-bytes 134217728 --json \
  >"$out/bench_cuda_staged.json" 2>"$out/bench_cuda_staged.err" || rc=1
log "drpc bench done"

if [ -f "$peer" ] && python3 -c 'import torch' 2>/dev/null; then
  (cd /tmp && PYTHONUNBUFFERED=1 timeout 400 python3 "$peer" "$out/torch.json") \
    >"$out/torch.log" 2>&1 || log "torch peer FAILED (see torch.log)"
else
  log "torch peer skipped (no script or no torch)"
fi

python3 - "$out" <<'EOF' | tee -a "$out/summary.txt"
import json, os, sys
out = sys.argv[1]
def load(n):
    try:
        return json.load(open(os.path.join(out, n)))
    except Exception as e:
        return {"error": str(e)}
cpu, cu, st, tor = (load(n) for n in ("bench_cpu.json", "bench_cuda.json",
                                      "bench_cuda_staged.json", "torch.json"))
def g(d, k):
    v = d.get(k)
    return "%10.1f" % v if isinstance(v, (int, float)) else "%10s" % "-"
print("%-34s %10s %10s %10s %10s" % ("figure", "drpc", "staged", "torch", "target"))
print("%-34s %s %10s %s" % ("noop_sync_p50_us CPU agent", g(cpu, "noop_sync_p50_us"), "", g(tor, "noop_sync_p50_us")))
print("%-34s %s %10s %10s" % ("noop_sync_p50_us CUDA agent", g(cu, "noop_sync_p50_us"), "", ""))
for k in ("noop_sync_p99_us", "async_calls_per_s", "remote_to_here_us"):
    print("%-34s %s %10s %s" % (k + " CUDA agent", g(cu, k), "", g(tor, k)))
if isinstance(cpu.get("noop_sync_p50_us"), float) and isinstance(cu.get("noop_sync_p50_us"), float):
    print("CUDA-enabled / CPU agent no-op p50: %.2fx (target <= 1.5x)" % (cu["noop_sync_p50_us"] / cpu["noop_sync_p50_us"]))
targets = {1 << 24: ">=200", 1 << 27: ">=500"}
for s in [1 << 10, 1 << 16, 1 << 20, 1 << 24, 1 << 26, 1 << 27, 1 << 28, 1 << 29]:
    k = "echo_cuda:0_%dB_GBps" % s
    print("%-34s %s %s %s %10s" % ("echo %d MiB GB/s" % (s >> 20) if s >= 1 << 20 else "echo %d KiB GB/s" % (s >> 10),
                                 g(cu, k), g(st, k), g(tor, k), targets.get(s, "")))
for k in ("cuda.tensors_shared", "cuda.tensors_staged"):
    print("%-34s %s %s" % (k, g(cu, k), g(st, k)))
for n, d in (("cpu", cpu), ("cuda", cu), ("staged", st), ("torch", tor)):
    if "error" in d:
        print("%s: %s" % (n, d["error"]))
EOF
for f in bench_cpu.err bench_cuda.err bench_cuda_staged.err; do
  [ -s "$out/$f" ] && { echo "-- $f"; tail -5 "$out/$f"; } | tee -a "$out/summary.txt"
done
exit $rc

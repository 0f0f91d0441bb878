#!/usr/bin/env bash
# Builds the libFuzzer targets with clang into build-fuzz and runs each one
# for SECONDS (default 30) from its seed corpus with its dictionary, then
# prints exec/s per target. Exits non-zero when a target crashes, fails a
# check, leaks or hangs; the input is saved under build-fuzz/fuzz-out/<t>/.
#
# Usage: fuzz/run.sh [SECONDS]      run every target
#        fuzz/run.sh --probe        exit 0 when a clang with libFuzzer exists
# Environment: FUZZ_TARGETS (default: all six), FUZZ_CC (the compiler),
# FUZZ_ARGS (more libFuzzer flags, e.g. "-jobs=2 -workers=2"), FUZZ_RUNS
# (per-target run counts that override a -runs in FUZZ_ARGS, e.g.
# "fuzz_sim=2000 fuzz_replay=2000": the slow targets then stop after as
# many runs, and a fixed seed gives the same verdict on every machine).
#
# New inputs go to build-fuzz/fuzz-out/<t>/corpus, never into fuzz/corpus;
# merge them by hand when they are worth keeping:
#   build-fuzz/fuzz/<t> -merge=1 fuzz/corpus/<t> build-fuzz/fuzz-out/<t>/corpus
# (then rename the new files to their SHA-256, as gen_corpus.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."

# The first compiler that links a libFuzzer program.
find_cc() {
  local dir
  dir=$(mktemp -d)
  printf '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' >"$dir/t.c"
  for cc in ${FUZZ_CC:-} clang clang-18 clang-17 clang-16 clang-15 clang-14; do
    if command -v "$cc" >/dev/null 2>&1 &&
      "$cc" -fsanitize=fuzzer,address,undefined "$dir/t.c" -o "$dir/t" \
        >/dev/null 2>&1; then
      rm -rf "$dir"
      echo "$cc"
      return 0
    fi
  done
  rm -rf "$dir"
  return 1
}

if [ "${1:-}" = "--probe" ]; then
  find_cc >/dev/null
  exit
fi

secs=${1:-30}
targets=${FUZZ_TARGETS:-fuzz_wire fuzz_values fuzz_store fuzz_agent fuzz_sim fuzz_replay}
if ! cc=$(find_cc); then
  echo "fuzz/run.sh: no clang with libFuzzer found (set FUZZ_CC)" >&2
  exit 2
fi

build=build-fuzz
cmake -S . -B "$build" -G Ninja -DCMAKE_C_COMPILER="$cc" -DDRPC_FUZZ=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
# shellcheck disable=SC2086
cmake --build "$build" --target $targets >/dev/null

# A smaller ASan quarantine keeps the heap (and so every leak scan) small;
# known, reported leaks are suppressed so that fuzzing goes on past them.
export ASAN_OPTIONS=${ASAN_OPTIONS:-quarantine_size_mb=16:malloc_context_size=10}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/fuzz/lsan.supp}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

failed=0
printf '%-12s %10s %8s %s\n' target exec/s new result
for t in $targets; do
  out=$build/fuzz-out/$t
  mkdir -p "$out/corpus"
  log=$out/log
  rc=0
  # A per-target run count (FUZZ_RUNS), after FUZZ_ARGS: the last flag wins.
  runs=
  for tr in ${FUZZ_RUNS:-}; do
    if [ "${tr%%=*}" = "$t" ]; then
      runs="-runs=${tr#*=}"
    fi
  done
  # shellcheck disable=SC2086
  "$build/fuzz/$t" -max_total_time="$secs" -print_final_stats=1 \
    -timeout=25 -rss_limit_mb=2048 -dict="fuzz/$t.dict" \
    -artifact_prefix="$out/" ${FUZZ_ARGS:-} $runs "$out/corpus" \
    "fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
  execs=$(grep -m1 'stat::average_exec_per_sec' "$log" | awk '{print $2}')
  units=$(grep -m1 'stat::new_units_added' "$log" | awk '{print $2}')
  if [ "$rc" = 0 ]; then
    result=ok
  else
    result="FAILED (exit $rc; log $log)"
    failed=1
  fi
  printf '%-12s %10s %8s %s\n' "$t" "${execs:-?}" "${units:-?}" "$result"
  if [ "$rc" != 0 ]; then
    grep -E 'check failed|ERROR:|SUMMARY:|Test unit written' "$log" | head -8
  fi
done
exit "$failed"

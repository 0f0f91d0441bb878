#!/usr/bin/env bash
# Line and region coverage of core/ by the fuzz corpora: builds the plain
# corpus drivers with clang source-based coverage into build-cov, replays
# fuzz/corpus/<t> (plus any extra directories given, e.g. what fuzz/run.sh
# found in build-fuzz/fuzz-out/<t>/corpus) and prints llvm-cov's summary
# for core/*.c and traces/*.c (fuzz_replay reads recordings with the
# latter).
#
# Usage: fuzz/coverage.sh [--with-found]
set -euo pipefail
cd "$(dirname "$0")/.."
targets="fuzz_wire fuzz_values fuzz_store fuzz_agent fuzz_sim fuzz_replay"
cc=${FUZZ_CC:-clang}
ver=$("$cc" --version | sed -n 's/.*clang version \([0-9]*\).*/\1/p')
profdata=$(command -v "llvm-profdata-$ver" || command -v llvm-profdata)
cov=$(command -v "llvm-cov-$ver" || command -v llvm-cov)

build=build-cov
flags="-fprofile-instr-generate -fcoverage-mapping"
cmake -S . -B "$build" -G Ninja -DCMAKE_C_COMPILER="$cc" \
  -DCMAKE_BUILD_TYPE=Debug -DDRPC_CUDA=OFF -DCMAKE_C_FLAGS="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS="-fprofile-instr-generate" >/dev/null
# shellcheck disable=SC2086
cmake --build "$build" --target $targets >/dev/null
rm -rf "$build/prof"
mkdir -p "$build/prof"
objects=()
first=""
for t in $targets; do
  dirs=("fuzz/corpus/$t")
  if [ "${1:-}" = "--with-found" ] && [ -d "build-fuzz/fuzz-out/$t/corpus" ]; then
    dirs+=("build-fuzz/fuzz-out/$t/corpus")
  fi
  LLVM_PROFILE_FILE="$build/prof/$t.profraw" "$build/fuzz/$t" "${dirs[@]}" \
    >/dev/null
  if [ -z "$first" ]; then
    first=$build/fuzz/$t
  else
    objects+=(-object "$build/fuzz/$t")
  fi
done
"$profdata" merge -sparse "$build"/prof/*.profraw -o "$build/prof/all.profdata"
"$cov" report -instr-profile="$build/prof/all.profdata" "$first" \
  "${objects[@]}" core/*.c traces/*.c | sed "s|$PWD/||"

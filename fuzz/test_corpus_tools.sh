#!/usr/bin/env bash
# ctest fuzz_corpus_tools (label fuzz): both directions between recordings
# and fuzz inputs.
#
#  1. `drpc trace to-corpus` turns a simulated recording into fuzz_wire
#     and fuzz_agent inputs: files named by their SHA-256, none empty, the
#     agent programs carrying the recorded frames, a second run writing
#     nothing new; both targets run them cleanly.
#  2. DRPC_FUZZ_RECORD=FILE.db fuzz_agent INPUT records that input's run:
#     `drpc replay` finds it identical, `drpc viz` and `drpc trace export`
#     open it, and to-corpus on it gives back frames of the first recording.
#  3. Bad input to to-corpus (no such file, not a recording, missing
#     arguments) is refused with exit 2 and a message.
#
# Usage: test_corpus_tools.sh DRPC FUZZ_WIRE FUZZ_AGENT
set -euo pipefail
drpc=$1 fuzz_wire=$2 fuzz_agent=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
# The libFuzzer build's binaries take files the same way with -runs=0.
run_target() { # binary dir
  if "$1" -help=1 2>&1 | grep -q libFuzzer; then
    "$1" -runs=0 "$2"
  else
    "$1" "$2"
  fi
}

# ---- 1. recording -> corpus ----
"$drpc" sim echo --workers 3 --iters 2 --seed 5 --no-faults \
  --record "$tmp/run.db" >/dev/null
"$drpc" trace to-corpus "$tmp/run.db" "$tmp/c" >"$tmp/out" ||
  fail "to-corpus exited $?"
cat "$tmp/out"
nw=$(find "$tmp/c/fuzz_wire" -type f | wc -l)
na=$(find "$tmp/c/fuzz_agent" -type f | wc -l)
[ "$nw" -gt 10 ] || fail "only $nw fuzz_wire inputs"
[ "$na" -gt 2 ] || fail "only $na fuzz_agent inputs"
for f in "$tmp"/c/*/*; do
  [ -s "$f" ] || fail "$f is empty"
  sum=$(sha256sum "$f" | cut -d' ' -f1)
  [ "$sum" = "$(basename "$f")" ] || fail "$f is not named by its SHA-256"
done
# Every fuzz_wire input is a frame (the magic first); agent programs carry
# them (some program holds the bytes of some frame).
for f in "$tmp"/c/fuzz_wire/*; do
  [ "$(head -c 4 "$f")" = DRPC ] || fail "$f does not start with DRPC"
done
grep -lq DRPC "$tmp"/c/fuzz_agent/* || fail "no agent program holds a frame"
"$drpc" trace to-corpus "$tmp/run.db" "$tmp/c" >"$tmp/out2"
grep -q ': 0 fuzz_wire and 0 fuzz_agent inputs written' "$tmp/out2" ||
  fail "a second to-corpus wrote new files: $(cat "$tmp/out2")"
"$drpc" trace to-corpus "$tmp/run.db" "$tmp/m" --max 3 >/dev/null
[ "$(find "$tmp/m/fuzz_wire" -type f | wc -l)" = 3 ] || fail "--max 3"
run_target "$fuzz_wire" "$tmp/c/fuzz_wire" >/dev/null
run_target "$fuzz_agent" "$tmp/c/fuzz_agent" >/dev/null

# ---- 2. fuzz_agent input -> recording ----
# Each program's run recorded and replayed; the frames it delivered come
# back out of to-corpus under the names the first run gave them.
best=0
for prog in "$tmp"/c/fuzz_agent/*; do
  rm -rf "$tmp/back.db" "$tmp/c2"
  DRPC_FUZZ_RECORD="$tmp/back.db" run_target "$fuzz_agent" "$prog" \
    >/dev/null 2>&1
  [ -s "$tmp/back.db" ] || fail "fuzz_agent wrote no recording for $prog"
  "$drpc" replay "$tmp/back.db" >"$tmp/replay" ||
    fail "drpc replay of the recording of $prog: $(cat "$tmp/replay")"
  grep -q '^identical' "$tmp/replay" || fail "replay: $(cat "$tmp/replay")"
  "$drpc" trace to-corpus "$tmp/back.db" "$tmp/c2" >/dev/null
  common=$(comm -12 <(ls "$tmp/c/fuzz_wire") <(ls "$tmp/c2/fuzz_wire") |
    wc -l)
  if [ "$common" -gt "$best" ]; then
    best=$common
    cp "$tmp/back.db" "$tmp/best.db"
  fi
done
[ "$best" -ge 2 ] ||
  fail "no fuzz_agent recording holds two of the first run's frames"
"$drpc" viz "$tmp/best.db" -o "$tmp/back.html" >/dev/null
[ -s "$tmp/back.html" ] || fail "drpc viz wrote nothing"
"$drpc" trace export "$tmp/best.db" -o "$tmp/back.json" >/dev/null
[ -s "$tmp/back.json" ] || fail "drpc trace export wrote nothing"

# ---- 3. bad input ----
bad() { # expected-substring, args...
  local want=$1
  shift
  local rc=0
  "$drpc" trace to-corpus "$@" >"$tmp/bad.out" 2>&1 || rc=$?
  [ "$rc" = 2 ] || fail "to-corpus $* exited $rc (expected 2)"
  grep -q "$want" "$tmp/bad.out" || fail "to-corpus $*: $(cat "$tmp/bad.out")"
}
bad "does not exist" "$tmp/none.db" "$tmp/x"
printf 'not a database' >"$tmp/junk.db"
bad "not a drpc recording" "$tmp/junk.db" "$tmp/x"
bad "usage" "$tmp/run.db"
echo "ok: $nw fuzz_wire and $na fuzz_agent inputs; their runs replay" \
  "identically; one recording holds $best of the recorded frames"

#!/usr/bin/env bash
# Writes the fuzz_replay seeds into fuzz/corpus/fuzz_replay/: small real
# recordings of simulated runs (echo, fanout with faults, timeouts,
# rref_chain), rewritten with 512-byte pages so that they stay small, and
# copies of one of them broken in the ways a reader must refuse or report
# (each named below). Files are named by their SHA-256, as gen_corpus.sh
# names the other corpora; existing files stay.
#
# Usage: fuzz/gen_replay_corpus.sh [BUILD_DIR]   (default: build; needs the
# sqlite3 command-line shell)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
command -v sqlite3 >/dev/null || {
  echo "gen_replay_corpus.sh: needs the sqlite3 shell" >&2
  exit 2
}
if [ ! -f "$build/build.ninja" ]; then
  cmake -S . -B "$build" -G Ninja >/dev/null
fi
cmake --build "$build" --target drpc >/dev/null
drpc=$build/drpc
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out=fuzz/corpus/fuzz_replay
mkdir -p "$out"

small() { # db: 512-byte pages, one self-contained file
  sqlite3 "$1" "PRAGMA journal_mode=DELETE; PRAGMA page_size=512; VACUUM;" \
    >/dev/null
}

record() { # name, drpc sim arguments...
  local name=$1
  shift
  "$drpc" sim "$@" --record "$tmp/$name.db" >/dev/null
  small "$tmp/$name.db"
}

record echo echo --workers 2 --iters 1 --seed 1 --no-faults
record fanout fanout --workers 3 --iters 1 --seed 3
record timeouts timeouts --workers 2 --iters 1 --seed 2 --no-faults
record rref rref_chain --workers 2 --iters 1 --seed 4 --no-faults

# Broken copies of the echo recording: name, then the SQL that breaks it.
broken() {
  cp "$tmp/echo.db" "$tmp/$1.db"
  sqlite3 "$tmp/$1.db" "$2" >/dev/null
  small "$tmp/$1.db"
}
broken kind99 "UPDATE events SET kind=99 WHERE id=5"
broken size_mismatch "UPDATE events SET size=size+1 WHERE id=(SELECT min(id) FROM events WHERE payload IS NOT NULL)"
broken no_payload "DELETE FROM payloads WHERE id=(SELECT min(payload) FROM events)"
broken no_string "UPDATE events SET name=99999 WHERE name IS NOT NULL"
broken text_time "UPDATE events SET t_ns='soon' WHERE id=3"
broken no_start "DELETE FROM events WHERE kind=7 AND node=0"
broken big_world "UPDATE events SET xid=1000000000 WHERE kind=7"
broken short_start "UPDATE payloads SET bytes=substr(bytes,1,12), size=12 WHERE id IN (SELECT payload FROM events WHERE kind=7); UPDATE events SET size=12 WHERE kind=7"
broken frame_bits "UPDATE payloads SET bytes=zeroblob(size) WHERE id IN (SELECT payload FROM events WHERE kind=1 LIMIT 2)"
broken seq_dup "UPDATE events SET seq=0 WHERE node=1"
broken node_big "UPDATE nodes SET node=70000 WHERE node=1"
broken no_runs "DELETE FROM runs"
broken version2 "PRAGMA user_version=2"
broken format "UPDATE meta SET value='other' WHERE key='format'"
broken no_events_table "DROP TABLE events"
broken events_view "ALTER TABLE events RENAME TO ev0; CREATE VIEW events AS SELECT * FROM ev0"
# Cut short (the header says more pages than the file holds) and a
# damaged page size field.
head -c 6000 "$tmp/echo.db" >"$tmp/truncated.db"
cp "$tmp/echo.db" "$tmp/page_size.db"
printf '\x03\x00' | dd of="$tmp/page_size.db" bs=1 seek=16 conv=notrunc \
  status=none

for f in "$tmp"/*.db; do
  sum=$(sha256sum "$f" | cut -d' ' -f1)
  cp "$f" "$out/$sum"
done
echo "fuzz_replay: $(find "$out" -maxdepth 1 -type f | wc -l) files"

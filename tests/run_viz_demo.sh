#!/bin/sh
# drpc demo ends by writing its recording, the recording's Chrome trace and
# its viewer page (drpc viz), and prints the three paths.
set -eu
bin=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() {
  echo "FAIL: $*"
  exit 1
}
cd "$dir"
"$bin" demo --record "$dir/d.db" >"$dir/out" 2>&1 || {
  cat "$dir/out"
  fail "drpc demo failed"
}
tail -5 "$dir/out"
for f in d.db d.json d.html; do
  [ -s "$dir/$f" ] || fail "$f not written"
done
grep -q "^recording: $dir/d.db " "$dir/out" || fail "recording path not printed"
grep -q "^chrome trace: $dir/d.json " "$dir/out" || fail "trace path not printed"
grep -q "^viewer page: $dir/d.html " "$dir/out" || fail "page path not printed"
grep -q 'id="drpc-data"' "$dir/d.html" || fail "d.html is not a viewer page"
for w in w0 w1 w2 w3; do
  grep -q "\"$w\"" "$dir/d.html" || fail "worker $w not on the page"
done
echo "ok"

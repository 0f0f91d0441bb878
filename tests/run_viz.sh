#!/bin/sh
# drpc viz: records a simulated run, writes its page and checks it is
# self-contained, names the workers and embeds the data; bad input exits 2.
# With node installed, viz/check.js also parses the data and runs the
# viewer against a stub canvas.
set -eu
bin=$1
src=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$bin" sim fanout --seed 3 --swarm --record "$dir/x.db" >/dev/null
"$bin" viz "$dir/x.db" -o "$dir/x.html"
[ -s "$dir/x.html" ] || fail "no page written"
if grep -Eiq '<script[^>]+src=|<link[^>]+https?:' "$dir/x.html"; then
  fail "page loads external scripts or styles"
fi
if grep -Eiq '(src|href)="?(https?:)?//' "$dir/x.html"; then
  fail "page references the network"
fi
grep -q 'id="drpc-data"' "$dir/x.html" || fail "no embedded data marker"
for w in w0 w1 w2 w3; do
  grep -q "\"$w\"" "$dir/x.html" || fail "worker $w not named"
done

# Bad input: a missing file, a text file, no output; exit 2 with a message.
expect2() {
  set +e
  "$@" >"$dir/out" 2>&1
  rc=$?
  set -e
  [ "$rc" = 2 ] || fail "exit $rc (want 2) from: $*"
  grep -q "drpc viz" "$dir/out" || grep -q "usage" "$dir/out" ||
    fail "no message from: $*"
  cat "$dir/out"
}
expect2 "$bin" viz "$dir/missing.db" -o "$dir/y.html"
grep -q "does not exist" "$dir/out" || fail "missing file not reported"
echo "not a recording" >"$dir/text.db"
expect2 "$bin" viz "$dir/text.db" -o "$dir/y.html"
grep -q "not a drpc recording" "$dir/out" || fail "text file not reported"
expect2 "$bin" viz "$dir/x.db"
[ ! -e "$dir/y.html" ] || fail "a page was written for bad input"

if command -v node >/dev/null 2>&1; then
  node "$src/viz/check.js" "$dir/x.html"
else
  echo "node not found: skipping the JSON and viewer checks"
fi
echo "ok"

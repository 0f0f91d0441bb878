#!/bin/sh
# drpc viz in a real browser: records a simulated run with faults, writes
# its page and runs viz/browser.js check on it in headless Chromium (lanes,
# arrows, a real click on an arrow, zoom, pan, filters); screenshots go to
# BUILD/Testing/viz/<driver>/.
#
#   run_viz_browser.sh DRPC BUILD_DIR
#
# Setup: as root, installs Debian's chromium and chromium-driver (and
# nodejs when node is missing) with apt-get; installs playwright-core with
# npm into BUILD/viz-node when the npm registry answers. The checks run
# with playwright-core when it is there and always with the fallback
# driver (W3C WebDriver to chromedriver); DRPC_VIZ_DRIVER=playwright or
# =webdriver runs only that one (playwright then required). Exits 77
# (skipped) only when Chromium (or node) cannot be installed or started.
set -u
bin=$1
build=$(cd "$2" && pwd)
src=$(cd "$(dirname "$0")/.." && pwd)
out=$build/Testing/viz
cache=$build/viz-node
PLAYWRIGHT_VERSION=1.65.1
skip() {
  echo "SKIP: $*"
  exit 77
}
fail() {
  echo "FAIL: $*"
  exit 1
}

apt_install() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || return 1
  echo "installing with apt-get: $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null 2>&1 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null 2>&1; }
}

chromium=$(command -v chromium || true)
chromedriver=$(command -v chromedriver || true)
if [ -z "$chromium" ] || [ -z "$chromedriver" ] || ! command -v node >/dev/null 2>&1; then
  pkgs="chromium chromium-driver"
  command -v node >/dev/null 2>&1 || pkgs="$pkgs nodejs"
  apt_install $pkgs || echo "could not install $pkgs"
  chromium=$(command -v chromium || true)
  chromedriver=$(command -v chromedriver || true)
fi
[ -n "$chromium" ] || skip "chromium is not installed and cannot be (needs root and apt-get)"
command -v node >/dev/null 2>&1 || skip "node is not installed and cannot be"
node -e 'if (typeof fetch !== "function") process.exit(1)' ||
  skip "node $(node --version) has no fetch (needs node 18 or later)"
mkdir -p "$out"
if ! timeout 60 "$chromium" --headless=new --no-sandbox --disable-gpu \
  --disable-dev-shm-usage --dump-dom about:blank >"$out.start.log" 2>&1; then
  tail -5 "$out.start.log"
  skip "chromium ($chromium) does not start headless"
fi
rm -f "$out.start.log"

# playwright-core from npm, into the build tree, when the registry answers
want=${DRPC_VIZ_DRIVER:-}
pw=""
if [ "$want" != webdriver ]; then
  if [ ! -f "$cache/node_modules/playwright-core/package.json" ] &&
    command -v npm >/dev/null 2>&1; then
    mkdir -p "$cache"
    timeout 120 npm install --prefix "$cache" --no-audit --no-fund --no-save \
      --fetch-retries=0 --fetch-timeout=20000 \
      "playwright-core@$PLAYWRIGHT_VERSION" >"$cache/npm.log" 2>&1 ||
      { echo "npm could not install playwright-core:"; tail -3 "$cache/npm.log"; }
  fi
  if [ -f "$cache/node_modules/playwright-core/package.json" ]; then
    pw=$cache
  elif [ "$want" = playwright ]; then
    fail "DRPC_VIZ_DRIVER=playwright but playwright-core is not installed in $cache"
  else
    echo "playwright-core unavailable: using the WebDriver fallback only"
  fi
fi
drivers=""
[ -n "$pw" ] && drivers=playwright
if [ "$want" != playwright ]; then
  [ -n "$chromedriver" ] || {
    [ -n "$pw" ] || skip "chromedriver is not installed and cannot be"
    fail "chromedriver missing (install chromium-driver)"
  }
  drivers="$drivers webdriver"
fi

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# rref_chain seed 4: a crash, link faults, resets, lost messages and RRefs
"$bin" sim rref_chain --seed 4 --swarm --record "$dir/x.db" >/dev/null ||
  fail "drpc sim failed"
"$bin" viz "$dir/x.db" -o "$dir/x.html" || fail "drpc viz failed"

# Counts from the recording itself, with SQL, when python3 is there.
expect=""
if command -v python3 >/dev/null 2>&1; then
  expect=$(python3 - "$dir/x.db" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
run = db.execute("SELECT min(id) FROM runs").fetchone()[0]
lanes = "(SELECT node FROM nodes WHERE run = %d AND node >= 0)" % run
q = lambda sql: db.execute(sql).fetchone()[0]
print("lanes=%d,msgs=%d,faults=%d,resets=%d" % (
    q("SELECT count(*) FROM nodes WHERE run = %d AND node >= 0" % run),
    q("SELECT count(*) FROM events WHERE run = %d AND kind = 20 AND node IN %s "
      "AND peer IN %s" % (run, lanes, lanes)),
    q("SELECT count(*) FROM events WHERE run = %d AND kind = 70" % run),
    q("SELECT count(*) FROM events WHERE run = %d AND kind = 3 AND aux != 0" % run)))
EOF
  ) || fail "counting the recording with python3"
  echo "from the recording: $expect"
else
  echo "python3 not found: counts come from the page's embedded data only"
fi

rc=0
for d in $drivers; do
  echo "== driver $d"
  rm -rf "$out/$d"
  node "$src/viz/browser.js" check "$dir/x.html" --driver "$d" \
    --playwright "$pw" --chromium "$chromium" \
    --chromedriver "${chromedriver:-/usr/bin/chromedriver}" \
    --out "$out/$d" --expect "$expect" || rc=1
done
[ "$rc" = 0 ] || fail "browser checks failed"
echo "ok"

#!/bin/sh
# drpc viz --svg: the picture of a simulated run with faults is well-formed
# XML with a lane per worker and an element per message, fault, reset and
# span (counted again from the recording with SQL); a --from/--to window
# holds exactly the messages that overlap it, clipped to the plot; time
# units agree; bad arguments exit 2 with a message and write nothing.
# The exact checks need python3 (xml.etree, sqlite3); without it the
# picture is checked with xmllint (when there) and grep.
set -eu
bin=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() {
  echo "FAIL: $*"
  exit 1
}

# rref_chain seed 4: a crash, link faults, resets, lost messages and RRefs
"$bin" sim rref_chain --seed 4 --swarm --record "$dir/x.db" >/dev/null
"$bin" viz "$dir/x.db" --svg "$dir/full.svg"
[ -s "$dir/full.svg" ] || fail "no picture written"

# Time units: no unit means ms; these all name the same window.
"$bin" viz "$dir/x.db" --svg "$dir/u1.svg" --from 2 --to 0.05s >/dev/null
"$bin" viz "$dir/x.db" --svg "$dir/u2.svg" --from 2ms --to 50ms >/dev/null
"$bin" viz "$dir/x.db" --svg "$dir/u3.svg" --from 2000us --to 50000000ns \
  >/dev/null
cmp -s "$dir/u1.svg" "$dir/u2.svg" && cmp -s "$dir/u1.svg" "$dir/u3.svg" ||
  fail "the same window in different units gave different pictures"
grep -q 'data-from="2000000" data-to="50000000"' "$dir/u1.svg" ||
  fail "window 2 .. 50 ms not recorded as 2000000 .. 50000000 ns"
cmp -s "$dir/u1.svg" "$dir/full.svg" && fail "the window changed nothing"

# Both outputs at once.
"$bin" viz "$dir/x.db" -o "$dir/x.html" --svg "$dir/both.svg" >/dev/null
[ -s "$dir/x.html" ] && cmp -s "$dir/both.svg" "$dir/full.svg" ||
  fail "-o with --svg"

if command -v python3 >/dev/null 2>&1; then
  python3 - "$bin" "$dir" <<'EOF'
import sqlite3, subprocess, sys
import xml.etree.ElementTree as ET

binary, d = sys.argv[1], sys.argv[2]
NS = "{http://www.w3.org/2000/svg}"
failed = []


def check(ok, what, detail=""):
    print(("ok   " if ok else "FAIL ") + what + (": %s" % (detail,) if detail != "" else ""))
    if not ok:
        failed.append(what)


def load(path):
    root = ET.parse(path).getroot()  # raises on malformed XML
    check(root.tag == NS + "svg", path.split("/")[-1] + " is well-formed SVG")
    return root


def cls(e):
    return (e.get("class") or "").split()


def msgs(root):
    out = []
    for e in root.iter():
        c = cls(e)
        if c[:1] == ["msg"]:
            t0 = int(e.get("data-t0"))
            t1 = int(e.get("data-t1")) if e.get("data-t1") is not None else None
            out.append((e, "lost" in c, int(e.get("data-from")), int(e.get("data-to")),
                        int(e.get("data-id")), t0, t1))
    return out


db = sqlite3.connect(d + "/x.db")
run = db.execute("SELECT min(id) FROM runs").fetchone()[0]
q = lambda sql: db.execute(sql, (run,)).fetchone()[0]
lane_sql = "(SELECT node FROM nodes WHERE run = ?1 AND node >= 0)"
want = {
    "lanes": q("SELECT count(*) FROM nodes WHERE run = ? AND node >= 0"),
    "msgs": q("SELECT count(*) FROM events WHERE run = ?1 AND kind = 20 AND node IN %s "
              "AND peer IN %s" % (lane_sql, lane_sql)),
    "faults": q("SELECT count(*) FROM events WHERE run = ? AND kind = 70"),
    "resets": q("SELECT count(*) FROM events WHERE run = ?1 AND kind = 3 AND aux != 0 "
                "AND node IN %s" % lane_sql),
    "rpcs": q("SELECT count(*) FROM events WHERE run = ?1 AND kind = 40 AND node IN %s" % lane_sql),
    "work": q("SELECT count(*) FROM events WHERE run = ?1 AND kind = 24 AND node IN %s" % lane_sql),
    "failed": q("SELECT count(*) FROM events WHERE run = ?1 AND kind = 41 AND aux != 0 "
                "AND node IN %s" % lane_sql),
}
names = [r[0] for r in db.execute(
    "SELECT coalesce(name, 'node ' || node) FROM nodes WHERE run = ? AND node >= 0 ORDER BY node", (run,))]

full = load(d + "/full.svg")
lanes = [e for e in full.iter() if cls(e) == ["lane"]]
check(len(lanes) == want["lanes"] and full.get("data-lanes") == str(want["lanes"]),
      "a lane per worker", (len(lanes), want["lanes"]))
check(["".join(e.find(NS + "text").itertext()) for e in lanes] == names, "lanes named after the workers",
      names)
m = msgs(full)
lost = [x for x in m if x[1]]
arrows = [x for x in m if not x[1]]
check(len(m) == want["msgs"], "an element per message sent between workers", (len(m), want["msgs"]))
check(len(lost) > 0 and len(arrows) > 0, "arrows and lost messages", (len(arrows), len(lost)))
check(all(x[0].get("marker-end", "").startswith("url(#a") for x in arrows),
      "every arrow of the whole run has its head")
count = lambda root, c: sum(1 for e in root.iter() if cls(e) == [c])
check(count(full, "fault") == want["faults"], "faults marked", (count(full, "fault"), want["faults"]))
check(count(full, "reset") == want["resets"], "resets marked", (count(full, "reset"), want["resets"]))
check(count(full, "crash") >= 1, "crashed intervals shaded", count(full, "crash"))
check(count(full, "rpc") == want["rpcs"], "an RPC span per call", (count(full, "rpc"), want["rpcs"]))
check(count(full, "work") == want["work"], "a span per served request", (count(full, "work"), want["work"]))
check(count(full, "rref") > 0, "RRef events marked", count(full, "rref"))
red = sum(1 for e in full.iter() if cls(e) == ["rpc"] and e.get("fill") == "#e53935")
check(want["failed"] > 0 and red == want["failed"], "failed calls red", (red, want["failed"]))
titles = ["".join(e.itertext()) for e in full.iter() if cls(e) == ["rpc"] and e.get("fill") == "#e53935"]
check(all("DRPC_E" in x for x in titles), "failed calls name their error", titles[:2])

# A window: from the 30th to the 60th percentile of the send times.
ts = sorted(x[5] for x in m)
a, b = ts[len(ts) * 3 // 10], ts[len(ts) * 6 // 10]
if b <= a:
    b = a + 1000
r = subprocess.run([binary, "viz", d + "/x.db", "--svg", d + "/win.svg", "--from", "%dns" % a,
                    "--to", "%.3fus" % (b / 1e3)], capture_output=True, text=True)
check(r.returncode == 0, "window %d .. %d ns written" % (a, b), r.stderr.strip())
b = int(round(b / 1e3, 3) * 1e3)  # what %.3fus names
win = load(d + "/win.svg")
check(win.get("data-from") == str(a) and win.get("data-to") == str(b), "the window is the one asked for",
      (win.get("data-from"), win.get("data-to")))
key = lambda x: (x[1], x[2], x[3], x[4], x[5], x[6])
inside = sorted(key(x) for x in m if x[5] <= b and max(x[5], x[6] if x[6] is not None else x[5]) >= a)
got = sorted(key(x) for x in msgs(win))
check(0 < len(got) < len(m), "the window holds some of the messages", (len(got), len(m)))
check(got == inside, "exactly the messages that overlap the window", (len(got), len(inside)))
lo, hi = 110, 1200 - 12
xs = [float(x[0].get(k)) for x in msgs(win) if not x[1] for k in ("x1", "x2")]
check(all(lo - 0.05 <= x <= hi + 0.05 for x in xs), "arrows clipped to the plot", (min(xs), max(xs)))
heads = all((x[0].get("marker-end") is not None) == (x[6] <= b) for x in msgs(win) if not x[1])
check(heads, "arrows cut at the window's end have no head")
check(count(win, "lane") == want["lanes"], "the window keeps every lane")
check(count(win, "rpc") < count(full, "rpc"), "spans outside the window left out",
      (count(win, "rpc"), count(full, "rpc")))
sys.exit(1 if failed else 0)
EOF
else
  echo "python3 not found: structural checks only"
  if command -v xmllint >/dev/null 2>&1; then
    xmllint --noout "$dir/full.svg" "$dir/u1.svg" || fail "not well-formed XML"
  fi
  [ "$(grep -c '<svg ' "$dir/full.svg")" = 1 ] && tail -1 "$dir/full.svg" |
    grep -q '^</svg>$' || fail "not one <svg> element"
  [ "$(grep -c 'class="lane"' "$dir/full.svg")" = 4 ] || fail "not 4 lanes"
  grep -q '<line class="msg"' "$dir/full.svg" || fail "no arrows"
  grep -q 'class="msg lost"' "$dir/full.svg" || fail "no lost message"
  # every message in the window overlaps it: t0 <= to, max(t0, t1) >= from
  grep -o 'class="msg[ "][^>]*' "$dir/u1.svg" | awk '
    { t0 = -1; t1 = -1
      for (i = 1; i <= NF; i++) {
        if ($i ~ /^data-t0=/) { gsub(/[^0-9]/, "", $i); t0 = $i + 0 }
        if ($i ~ /^data-t1=/) { gsub(/[^0-9]/, "", $i); t1 = $i + 0 } }
      e = t1 > t0 ? t1 : t0
      if (t0 > 50000000 || e < 2000000) bad++; n++ }
    END { if (bad || !n) { print "bad " bad " of " n; exit 1 } }' ||
    fail "the window holds messages outside it"
fi

# Bad arguments: exit 2 with a message, nothing written.
expect2() {
  set +e
  "$@" >"$dir/out" 2>&1
  rc=$?
  set -e
  [ "$rc" = 2 ] || fail "exit $rc (want 2) from: $*"
  grep -q "drpc viz\|usage" "$dir/out" || fail "no message from: $*"
  head -1 "$dir/out"
  [ ! -e "$dir/bad.svg" ] || fail "a picture was written for: $*"
}
expect2 "$bin" viz "$dir/x.db" --svg "$dir/bad.svg" --from x
expect2 "$bin" viz "$dir/x.db" --svg "$dir/bad.svg" --from -1
expect2 "$bin" viz "$dir/x.db" --svg "$dir/bad.svg" --from 1h
expect2 "$bin" viz "$dir/x.db" --svg "$dir/bad.svg" --to 1e3
expect2 "$bin" viz "$dir/x.db" --svg "$dir/bad.svg" --from 5 --to 5
expect2 "$bin" viz "$dir/x.db" --svg "$dir/bad.svg" --from 6ms --to 5ms
expect2 "$bin" viz "$dir/x.db" --svg "$dir/bad.svg" --from 100000s
grep -q "after the end of the run" "$dir/out" || fail "late --from not explained"
expect2 "$bin" viz "$dir/x.db" --svg "$dir/bad.svg" --to 99999999999999s
expect2 "$bin" viz "$dir/x.db" -o "$dir/bad.svg" --from 5
expect2 "$bin" viz "$dir/x.db" --svg "$dir/x.db"
expect2 "$bin" viz "$dir/x.db" --svg "$dir/bad.svg" -o "$dir/bad.svg"
expect2 "$bin" viz "$dir/missing.db" --svg "$dir/bad.svg"
expect2 "$bin" viz "$dir/x.db" --svg "$dir/no/such/dir/x.svg"
expect2 "$bin" viz "$dir/x.db" --svg
echo "ok"

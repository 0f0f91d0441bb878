/* drpc viz: the viewer. Reads the JSON that `drpc viz` embedded in the
 * page (element #drpc-data, column arrays, strings interned) and draws it
 * on one <canvas>: a space-time diagram of messages between workers above,
 * RPC and server-work spans below. Only what lies in the visible time
 * window is drawn: items are sorted by start time, and a running maximum
 * of end times lets a binary search find the first one still visible. */
(function () {
  'use strict';
  const D = JSON.parse(document.getElementById('drpc-data').textContent);
  const S = D.strings;
  const str = (i) => (i >= 0 && i < S.length ? S[i] : '');
  const TMAX = Math.max(1, D.tmax);

  /* ---- data ---------------------------------------------------------- */
  const nodeIds = D.nodes.id;
  const nodeNames = D.nodes.name;
  const laneOf = new Map();
  nodeIds.forEach((id, i) => laneOf.set(id, i));
  const NL = nodeIds.length;
  const nname = (id) =>
    laneOf.has(id) ? nodeNames[laneOf.get(id)] : id < 0 ? '(link)' : 'node ' + id;

  function f64(a) { return Float64Array.from(a); }
  function i32(a) { return Int32Array.from(a); }

  /* end times' running maximum, for culling by binary search */
  function prefMax(end) {
    const p = new Float64Array(end.length);
    let m = -Infinity;
    for (let i = 0; i < end.length; i++) { if (end[i] > m) m = end[i]; p[i] = m; }
    return p;
  }

  /* sorted times arrive as deltas, ends as durations (null: never) */
  function undelta(d) {
    const a = new Float64Array(d.length);
    let t = 0;
    for (let i = 0; i < d.length; i++) { t += d[i]; a[i] = t; }
    return a;
  }
  function ends(start, dur) {
    const a = new Float64Array(dur.length);
    for (let i = 0; i < dur.length; i++) a[i] = dur[i] === null ? -1 : start[i] + dur[i];
    return a;
  }
  const mts = undelta(D.msgs.dts);
  const M = {
    ts: mts, tr: ends(mts, D.msgs.lat), from: i32(D.msgs.from),
    to: i32(D.msgs.to), type: i32(D.msgs.type), id: f64(D.msgs.id),
    size: f64(D.msgs.size),
  };
  M.n = M.ts.length;
  M.end = new Float64Array(M.n);
  let nlost = 0;
  for (let i = 0; i < M.n; i++) {
    M.end[i] = M.tr[i] >= 0 ? Math.max(M.tr[i], M.ts[i]) : M.ts[i];
    if (M.tr[i] < 0) nlost++;
  }
  M.pm = prefMax(M.end);
  /* lane index of each end (-1: a node without a lane) */
  const laneIdx = (ids) => Int32Array.from(ids, (id) => (laneOf.has(id) ? laneOf.get(id) : -1));
  M.lf = laneIdx(M.from);
  M.lt = laneIdx(M.to);

  function spans(o) {
    const t0 = undelta(o.dt0);
    const s = {
      node: i32(o.node), peer: i32(o.peer), xid: f64(o.xid), t0,
      t1: ends(t0, o.dur), name: i32(o.name), aux: f64(o.aux), end: f64(o.end),
    };
    s.n = s.t0.length;
    s.e = new Float64Array(s.n); /* drawn end: open spans run to the end */
    for (let i = 0; i < s.n; i++) s.e[i] = s.t1[i] >= 0 ? s.t1[i] : TMAX;
    s.pm = prefMax(s.e);
    s.lane = Int32Array.from(s.node, (id) => (laneOf.has(id) ? laneOf.get(id) : -1));
    return s;
  }
  const R = spans(D.rpcs);
  const W = spans(D.work);
  const F = { t: f64(D.faults.t), node: i32(D.faults.node), name: i32(D.faults.name),
    a: f64(D.faults.a), b: f64(D.faults.b) };
  F.n = F.t.length;
  const X = { t: f64(D.resets.t), node: i32(D.resets.node), conn: f64(D.resets.conn),
    err: i32(D.resets.err), reason: i32(D.resets.reason) };
  X.n = X.t.length;
  const C = { node: i32(D.crashes.node), t0: f64(D.crashes.t0), t1: f64(D.crashes.t1) };
  C.n = C.node.length;
  const Q = { t: f64(D.rrefs.t), node: i32(D.rrefs.node), name: i32(D.rrefs.name),
    kc: i32(D.rrefs.kc), kl: f64(D.rrefs.kl), fc: i32(D.rrefs.fc), fl: f64(D.rrefs.fl) };
  Q.n = Q.t.length;
  const ST = { t: f64(D.starts.t), node: i32(D.starts.node) };

  const errName = (c) => (c === 0 ? 'ok' : (D.errors[c] || 'error ' + c));
  const typeName = (t) => D.msgTypes[t] || 'type ' + t;

  /* greedy packing of spans into at most K sub-rows per node */
  const K = 4;
  function pack(s) {
    s.row = new Int8Array(s.n);
    const ends = new Map();
    for (let i = 0; i < s.n; i++) {
      let r = ends.get(s.node[i]);
      if (!r) { r = []; ends.set(s.node[i], r); }
      let k = r.findIndex((e) => e <= s.t0[i]);
      if (k < 0) {
        if (r.length < K) k = r.length;
        else { k = 0; for (let j = 1; j < r.length; j++) if (r[j] < r[k]) k = j; }
      }
      r[k] = Math.max(r[k] || 0, s.e[i]);
      s.row[i] = k;
    }
    s.rows = new Map();
    for (const [node, r] of ends) s.rows.set(node, r.length);
  }
  pack(R);
  pack(W);

  /* ---- colours ------------------------------------------------------- */
  const PAL = ['#1f77b4', '#ff7f0e', '#2ca02c', '#9467bd', '#8c564b', '#e377c2',
    '#17becf', '#bcbd22', '#7f7f7f', '#3949ab', '#00897b', '#6d4c41', '#c0ca33',
    '#5e35b1', '#f4511e'];
  const typeColor = (t) => PAL[((t % PAL.length) + PAL.length) % PAL.length];
  const spanColor = (name) => PAL[(((name * 7 + 3) % PAL.length) + PAL.length) % PAL.length];

  /* ---- binary search --------------------------------------------------- */
  function lowerBound(a, x) { /* first i with a[i] >= x */
    let lo = 0, hi = a.length;
    while (lo < hi) { const m = (lo + hi) >> 1; if (a[m] < x) lo = m + 1; else hi = m; }
    return lo;
  }
  function upperBound(a, x) { /* first i with a[i] > x */
    let lo = 0, hi = a.length;
    while (lo < hi) { const m = (lo + hi) >> 1; if (a[m] <= x) lo = m + 1; else hi = m; }
    return lo;
  }

  /* ---- filters ------------------------------------------------------- */
  const el = (id) => document.getElementById(id);
  const filt = { worker: null, type: null, rpc: null, rref: null };
  function parseRRef(s) {
    s = s.trim();
    if (!s) return null;
    const m = /^(-?\d+)\s*[:,]\s*(\d+)$/.exec(s);
    if (m) return { c: +m[1], l: +m[2] };
    if (/^\d+$/.test(s)) return { c: null, l: +s };
    return undefined;
  }
  const rrefMatch = (i) => filt.rref && Q.kl[i] === filt.rref.l &&
    (filt.rref.c === null || Q.kc[i] === filt.rref.c);
  function msgOk(i) {
    if (filt.worker !== null && M.from[i] !== filt.worker && M.to[i] !== filt.worker) return false;
    if (filt.type !== null && M.type[i] !== filt.type) return false;
    if (filt.rpc !== null && M.id[i] !== filt.rpc) return false;
    return true;
  }
  function spanOk(s, i) {
    if (filt.worker !== null && s.node[i] !== filt.worker && s.peer[i] !== filt.worker) return false;
    if (filt.rpc !== null && s.xid[i] !== filt.rpc) return false;
    return true;
  }

  /* ---- view ---------------------------------------------------------- */
  const cv = el('cv');
  const ctx = cv.getContext('2d');
  const GUT = 96, AXIS = 22;
  let Wd = 0, Ht = 0;
  let v0 = 0, v1 = TMAX * 1.02; /* visible time window, ns */
  let sel = null; /* {k: 'msg'|'rpc'|'work'|'fault'|'reset'|'rref'|'crash', i} */
  let L = {}; /* layout */
  /* what the last frame drew, for the status line and window.drpcViewer */
  let last = { lanes: 0, visible: 0, arrows: 0, lost: 0, spans: 0, ms: 0 };

  function layout() {
    const dpr = window.devicePixelRatio || 1;
    Wd = cv.clientWidth; Ht = cv.clientHeight;
    cv.width = Math.round(Wd * dpr); cv.height = Math.round(Ht * dpr);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const topH = Math.max(NL * 18, Math.floor((Ht - AXIS) * 0.55));
    L.laneH = topH / Math.max(1, NL);
    L.top = AXIS;
    L.bot = AXIS + topH + 8;
    /* RPC timeline: per node, its calls' rows then its server work rows */
    const groups = [];
    for (const id of nodeIds) {
      groups.push({ node: id, s: R, n: R.rows.get(id) || 1, label: nname(id) + ' calls' });
      groups.push({ node: id, s: W, n: W.rows.get(id) || 1, label: nname(id) + ' serves' });
    }
    const rows = groups.reduce((a, g) => a + g.n, 0);
    L.rowH = Math.max(2, Math.min(12, (Ht - L.bot - 4) / Math.max(1, rows)));
    let y = L.bot;
    for (const g of groups) { g.y = y; y += g.n * L.rowH; }
    L.groups = groups;
    L.gOf = new Map();
    for (const g of groups) L.gOf.set((g.s === R ? 'r' : 'w') + g.node, g);
    L.gR = nodeIds.map((id) => L.gOf.get('r' + id));
    L.gW = nodeIds.map((id) => L.gOf.get('w' + id));
  }
  const xOf = (t) => GUT + ((t - v0) / (v1 - v0)) * (Wd - GUT - 8);
  const tOf = (x) => v0 + ((x - GUT) / (Wd - GUT - 8)) * (v1 - v0);
  const laneY = (id) => L.top + (laneOf.get(id) + 0.5) * L.laneH;

  function fmtT(ns) {
    const a = Math.abs(ns);
    if (a >= 1e9) return (ns / 1e9).toFixed(a >= 1e10 ? 2 : 3) + ' s';
    if (a >= 1e6) return (ns / 1e6).toFixed(a >= 1e7 ? 2 : 3) + ' ms';
    if (a >= 1e3) return (ns / 1e3).toFixed(a >= 1e4 ? 1 : 2) + ' us';
    return ns.toFixed(0) + ' ns';
  }

  let pending = false;
  function redraw() {
    if (!pending) { pending = true; requestAnimationFrame(draw); }
  }
  /* While the view moves (wheel, drag, keys), a frame draws at most
   * ARROW_BUDGET arrows, a fixed subset (every k-th message) so that the
   * picture stays put; rasterising tens of thousands of antialiased lines
   * is what makes a frame slow. The whole picture follows once the view
   * has rested for SETTLE_MS. */
  const ARROW_BUDGET = 3000, SETTLE_MS = 180;
  let settle = null;
  function moving() {
    if (settle !== null) clearTimeout(settle);
    settle = setTimeout(() => { settle = null; redraw(); }, SETTLE_MS);
    redraw();
  }

  function draw() {
    pending = false;
    const tStart = performance.now();
    ctx.clearRect(0, 0, Wd, Ht);
    ctx.font = '11px system-ui, sans-serif';
    const pxT = (v1 - v0) / Math.max(1, Wd - GUT - 8); /* ns per pixel */

    /* lanes */
    for (let li = 0; li < NL; li++) {
      const y = L.top + (li + 0.5) * L.laneH;
      const dim = filt.worker !== null && nodeIds[li] !== filt.worker;
      ctx.fillStyle = li % 2 ? '#f4f6f8' : '#ffffff';
      ctx.fillRect(GUT, L.top + li * L.laneH, Wd - GUT, L.laneH);
      ctx.strokeStyle = dim ? '#e0e0e0' : '#b0bec5';
      ctx.beginPath(); ctx.moveTo(GUT, y); ctx.lineTo(Wd, y); ctx.stroke();
    }
    /* crashed intervals */
    for (let i = 0; i < C.n; i++) {
      const t1 = C.t1[i] >= 0 ? C.t1[i] : TMAX;
      if (t1 < v0 || C.t0[i] > v1 || !laneOf.has(C.node[i])) continue;
      const li = laneOf.get(C.node[i]);
      const xa = Math.max(GUT, xOf(C.t0[i])), xb = Math.min(Wd, xOf(t1));
      ctx.fillStyle = 'rgba(229,57,53,0.15)';
      ctx.fillRect(xa, L.top + li * L.laneH + 1, Math.max(1, xb - xa), L.laneH - 2);
      if (sel && sel.k === 'crash' && sel.i === i) {
        ctx.strokeStyle = '#000'; ctx.strokeRect(xa, L.top + li * L.laneH + 1, Math.max(1, xb - xa), L.laneH - 2);
      }
    }
    /* link faults: dashed vertical lines across the lanes */
    ctx.save();
    ctx.beginPath(); ctx.rect(GUT, 0, Wd - GUT, Ht); ctx.clip();
    for (let i = lowerBound(F.t, v0); i < F.n && F.t[i] <= v1; i++) {
      const x = xOf(F.t[i]);
      const nm = str(F.name[i]);
      const isEnd = / end$/.test(nm);
      ctx.strokeStyle = isEnd ? 'rgba(251,140,0,0.45)' : 'rgba(251,140,0,0.95)';
      ctx.setLineDash(F.node[i] < 0 ? [4, 3] : []);
      ctx.beginPath();
      if (F.node[i] < 0 || !laneOf.has(F.node[i])) {
        ctx.moveTo(x, L.top); ctx.lineTo(x, L.top + NL * L.laneH);
      } else {
        const y = laneY(F.node[i]);
        ctx.moveTo(x, y - L.laneH / 2 + 1); ctx.lineTo(x, y + L.laneH / 2 - 1);
      }
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillStyle = '#e65100';
      ctx.beginPath(); ctx.moveTo(x - 4, L.top); ctx.lineTo(x + 4, L.top); ctx.lineTo(x, L.top + 6); ctx.fill();
      if (sel && sel.k === 'fault' && sel.i === i) {
        ctx.strokeStyle = '#000'; ctx.lineWidth = 2;
        ctx.beginPath(); ctx.moveTo(x, L.top); ctx.lineTo(x, L.top + NL * L.laneH); ctx.stroke();
        ctx.lineWidth = 1;
      }
    }

    /* messages, batched by type colour; a message whose ends fall on the
     * same pixels as the last one drawn between the same lanes is skipped */
    const slack = 20 * pxT;
    const i0 = lowerBound(M.pm, v0 - slack), i1 = upperBound(M.ts, v1);
    const byType = new Map();
    const lost = [];
    const lastA = new Int32Array(NL * NL).fill(-1e9), lastB = new Int32Array(NL * NL);
    let nvis = 0;
    for (let i = i0; i < i1; i++) {
      if (M.end[i] < v0 - slack || M.lf[i] < 0 || M.lt[i] < 0 || !msgOk(i)) continue;
      nvis++;
      if (M.tr[i] < 0) { lost.push(i); continue; }
      const pair = M.lf[i] * NL + M.lt[i];
      const xa = xOf(M.ts[i]) | 0, xb = xOf(M.tr[i]) | 0;
      if (lastA[pair] === xa && lastB[pair] === xb) continue;
      lastA[pair] = xa; lastB[pair] = xb;
      let a = byType.get(M.type[i]);
      if (!a) { a = []; byType.set(M.type[i], a); }
      a.push(i);
    }
    let narrows = 0, stride = 1;
    for (const a of byType.values()) narrows += a.length;
    if (settle !== null && narrows > ARROW_BUDGET) {
      stride = Math.ceil(narrows / ARROW_BUDGET);
      narrows = 0;
      for (const [type, a] of byType) {
        const kept = a.filter((i) => i % stride === 0);
        byType.set(type, kept);
        narrows += kept.length;
      }
    }
    const heads = nvis < 4000;
    const laneYs = new Float64Array(NL);
    for (let li = 0; li < NL; li++) laneYs[li] = L.top + (li + 0.5) * L.laneH;
    ctx.lineWidth = 1;
    for (const [type, a] of byType) {
      ctx.strokeStyle = typeColor(type);
      ctx.fillStyle = typeColor(type);
      ctx.beginPath();
      for (const i of a) {
        ctx.moveTo(xOf(M.ts[i]), laneYs[M.lf[i]]);
        ctx.lineTo(xOf(M.tr[i]), laneYs[M.lt[i]]);
      }
      ctx.stroke();
      if (heads) {
        ctx.beginPath();
        for (const i of a) {
          const xa = xOf(M.ts[i]), ya = laneYs[M.lf[i]];
          const xb = xOf(M.tr[i]), yb = laneYs[M.lt[i]];
          const ang = Math.atan2(yb - ya, xb - xa);
          ctx.moveTo(xb, yb);
          ctx.lineTo(xb - 6 * Math.cos(ang - 0.4), yb - 6 * Math.sin(ang - 0.4));
          ctx.lineTo(xb - 6 * Math.cos(ang + 0.4), yb - 6 * Math.sin(ang + 0.4));
        }
        ctx.fill();
      }
    }
    /* lost sends: a short stub toward the receiver, then a red x */
    ctx.beginPath();
    const xs = [];
    for (const i of lost) {
      const xa = xOf(M.ts[i]), ya = laneY(M.from[i]);
      const dy = Math.sign(laneY(M.to[i]) - ya) * Math.min(L.laneH * 0.45, 14);
      ctx.moveTo(xa, ya); ctx.lineTo(xa + 12, ya + dy);
      xs.push(xa + 12, ya + dy);
    }
    ctx.strokeStyle = '#9e9e9e'; ctx.stroke();
    ctx.beginPath();
    for (let k = 0; k < xs.length; k += 2) {
      const x = xs[k], y = xs[k + 1];
      ctx.moveTo(x - 3, y - 3); ctx.lineTo(x + 3, y + 3);
      ctx.moveTo(x + 3, y - 3); ctx.lineTo(x - 3, y + 3);
    }
    ctx.strokeStyle = '#e53935'; ctx.lineWidth = 1.5; ctx.stroke(); ctx.lineWidth = 1;

    /* connection resets: purple bars on the lane that saw them */
    for (let i = lowerBound(X.t, v0); i < X.n && X.t[i] <= v1; i++) {
      if (!laneOf.has(X.node[i])) continue;
      if (filt.worker !== null && X.node[i] !== filt.worker) continue;
      const x = xOf(X.t[i]), y = laneY(X.node[i]);
      ctx.fillStyle = '#8e24aa';
      ctx.fillRect(x - 1.5, y - L.laneH * 0.35, 3, L.laneH * 0.7);
      if (sel && sel.k === 'reset' && sel.i === i) {
        ctx.strokeStyle = '#000'; ctx.strokeRect(x - 3, y - L.laneH * 0.4, 6, L.laneH * 0.8);
      }
    }
    /* starts (a restart after a crash included) */
    ctx.fillStyle = '#263238';
    for (let i = 0; i < ST.t.length; i++) {
      if (ST.t[i] < v0 || ST.t[i] > v1 || !laneOf.has(ST.node[i])) continue;
      ctx.fillRect(xOf(ST.t[i]) - 1, laneY(ST.node[i]) - 5, 2, 10);
    }
    /* RRef events: green dots (the filtered RRef's in black, larger) */
    for (let i = lowerBound(Q.t, v0); i < Q.n && Q.t[i] <= v1; i++) {
      if (!laneOf.has(Q.node[i])) continue;
      const hit = rrefMatch(i);
      if (filt.rref && !hit) continue;
      const x = xOf(Q.t[i]), y = laneY(Q.node[i]) - L.laneH * 0.25;
      ctx.fillStyle = hit ? '#000' : '#43a047';
      ctx.beginPath(); ctx.arc(x, y, hit ? 4 : 3, 0, 2 * Math.PI); ctx.fill();
      if (sel && sel.k === 'rref' && sel.i === i) {
        ctx.strokeStyle = '#000'; ctx.beginPath(); ctx.arc(x, y, 6, 0, 2 * Math.PI); ctx.stroke();
      }
    }
    /* the selected message on top */
    if (sel && sel.k === 'msg') {
      const i = sel.i;
      const xa = xOf(M.ts[i]), ya = laneY(M.from[i]);
      ctx.strokeStyle = '#000'; ctx.lineWidth = 3;
      ctx.beginPath(); ctx.moveTo(xa, ya);
      if (M.tr[i] >= 0) ctx.lineTo(xOf(M.tr[i]), laneY(M.to[i]));
      else ctx.lineTo(xa + 12, ya + Math.sign(laneY(M.to[i]) - ya) * Math.min(L.laneH * 0.45, 14));
      ctx.stroke(); ctx.lineWidth = 1;
    }

    /* RPC timeline */
    let nspans = 0;
    for (const g of L.groups) {
      ctx.fillStyle = g.s === R ? '#fbfbfb' : '#f1f3f4';
      ctx.fillRect(GUT, g.y, Wd - GUT, g.n * L.rowH);
    }
    /* spans batched by colour; one that falls within the pixel the last
     * span of its row already covers is skipped */
    const byColor = new Map();
    const labels = [];
    for (const s of [R, W]) {
      const a = lowerBound(s.pm, v0), b = upperBound(s.t0, v1);
      const gs = s === R ? L.gR : L.gW;
      const lastX = new Float64Array(NL * K).fill(-1e9);
      for (let i = a; i < b; i++) {
        if (s.e[i] < v0 || s.lane[i] < 0 || !spanOk(s, i)) continue;
        nspans++;
        const xa = Math.max(GUT, xOf(s.t0[i]));
        const xb = Math.min(Wd, xOf(s.e[i]));
        const slot = s.lane[i] * K + s.row[i];
        if (xb < lastX[slot] + 1) continue;
        lastX[slot] = Math.max(xb, xa + 1);
        const y = gs[s.lane[i]].y + s.row[i] * L.rowH;
        const failed = s === R && s.t1[i] >= 0 && s.end[i] !== 0;
        const col = failed ? '#e53935' : s.t1[i] < 0 ? '#bdbdbd' : spanColor(s.name[i]);
        let arr = byColor.get(col);
        if (!arr) { arr = []; byColor.set(col, arr); }
        arr.push(xa, y + 0.5, Math.max(1, xb - xa));
        if (L.rowH >= 10 && xb - xa > 40) labels.push(str(s.name[i]), xa + 2, y + L.rowH - 2, xb - xa - 4);
      }
    }
    const rh = Math.max(1, L.rowH - 1);
    for (const [col, arr] of byColor) {
      ctx.fillStyle = col;
      ctx.beginPath();
      for (let k = 0; k < arr.length; k += 3) ctx.rect(arr[k], arr[k + 1], arr[k + 2], rh);
      ctx.fill();
    }
    ctx.fillStyle = '#fff';
    for (let k = 0; k < labels.length; k += 4) ctx.fillText(labels[k], labels[k + 1], labels[k + 2], labels[k + 3]);
    if (sel && (sel.k === 'rpc' || sel.k === 'work')) {
      const s = sel.k === 'rpc' ? R : W, i = sel.i;
      const g = L.gOf.get((sel.k === 'rpc' ? 'r' : 'w') + s.node[i]);
      if (g) {
        ctx.strokeStyle = '#000'; ctx.lineWidth = 2;
        const xa = xOf(s.t0[i]), xb = xOf(s.e[i]);
        ctx.strokeRect(xa, g.y + s.row[i] * L.rowH, Math.max(2, xb - xa), L.rowH);
        ctx.lineWidth = 1;
      }
    }
    ctx.restore();

    /* gutter labels and axis */
    ctx.fillStyle = '#fafafa'; ctx.fillRect(0, 0, GUT, Ht);
    ctx.fillStyle = '#222';
    ctx.textBaseline = 'middle';
    for (let li = 0; li < NL; li++) {
      ctx.font = filt.worker === nodeIds[li] ? 'bold 12px system-ui, sans-serif' : '12px system-ui, sans-serif';
      ctx.fillText(nodeNames[li], 6, L.top + (li + 0.5) * L.laneH, GUT - 10);
    }
    ctx.font = '10px system-ui, sans-serif';
    ctx.fillStyle = '#555';
    if (L.rowH >= 4) {
      for (const g of L.groups) ctx.fillText(g.label, 6, g.y + (g.n * L.rowH) / 2, GUT - 10);
    } else {
      ctx.fillText('RPC spans', 6, L.bot + 8);
    }
    ctx.textBaseline = 'alphabetic';
    drawAxis();
    const ms = performance.now() - tStart;
    last = { lanes: NL, visible: nvis, arrows: narrows, thinned: stride, lost: lost.length, spans: nspans, ms, v0, v1 };
    el('status').textContent = fmtT(v0) + ' .. ' + fmtT(v1) + ' | ' + nvis +
      ' messages' + (stride > 1 ? ' (1 in ' + stride + ' drawn while moving)' : '') + ', ' + nspans +
      ' spans shown | ' + ms.toFixed(1) + ' ms';
  }

  function drawAxis() {
    ctx.fillStyle = '#eceff1'; ctx.fillRect(GUT, 0, Wd - GUT, AXIS - 2);
    const span = v1 - v0;
    const raw = span / Math.max(1, (Wd - GUT) / 110);
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw);
    ctx.fillStyle = '#37474f'; ctx.strokeStyle = '#90a4ae';
    ctx.font = '10px system-ui, sans-serif';
    for (let t = Math.ceil(v0 / step) * step; t <= v1; t += step) {
      const x = xOf(t);
      ctx.beginPath(); ctx.moveTo(x, AXIS - 8); ctx.lineTo(x, AXIS - 2); ctx.stroke();
      ctx.fillText(fmtT(t), x + 2, AXIS - 9);
    }
  }

  /* ---- picking ------------------------------------------------------- */
  function segDist(px, py, ax, ay, bx, by) {
    const dx = bx - ax, dy = by - ay;
    const l2 = dx * dx + dy * dy;
    let u = l2 ? ((px - ax) * dx + (py - ay) * dy) / l2 : 0;
    u = Math.max(0, Math.min(1, u));
    const x = ax + u * dx - px, y = ay + u * dy - py;
    return Math.sqrt(x * x + y * y);
  }

  function pick(px, py) {
    const tol = 5, pxT = (v1 - v0) / Math.max(1, Wd - GUT - 8);
    const ta = tOf(px - tol), tb = tOf(px + tol);
    if (py < L.top + NL * L.laneH) {
      let best = null, bd = tol + 1;
      const take = (k, i, d) => { if (d < bd) { bd = d; best = { k, i }; } };
      for (let i = lowerBound(Q.t, ta); i < Q.n && Q.t[i] <= tb; i++)
        if (laneOf.has(Q.node[i]) && (!filt.rref || rrefMatch(i)))
          take('rref', i, Math.hypot(xOf(Q.t[i]) - px, laneY(Q.node[i]) - L.laneH * 0.25 - py) - 2);
      for (let i = lowerBound(X.t, ta); i < X.n && X.t[i] <= tb; i++)
        if (laneOf.has(X.node[i]) && Math.abs(laneY(X.node[i]) - py) < L.laneH * 0.4)
          take('reset', i, Math.abs(xOf(X.t[i]) - px) - 1);
      for (let i = lowerBound(F.t, ta); i < F.n && F.t[i] <= tb; i++) {
        const onLane = F.node[i] < 0 || !laneOf.has(F.node[i]) ||
          Math.abs(laneY(F.node[i]) - py) < L.laneH / 2;
        if (onLane) take('fault', i, Math.abs(xOf(F.t[i]) - px) + 0.5);
      }
      const slack = 20 * pxT;
      const i0 = lowerBound(M.pm, ta - slack), i1 = upperBound(M.ts, tb);
      for (let i = i0; i < i1; i++) {
        if (M.end[i] < ta - slack || !msgOk(i) || !laneOf.has(M.from[i]) || !laneOf.has(M.to[i])) continue;
        const xa = xOf(M.ts[i]), ya = laneY(M.from[i]);
        let xb, yb;
        if (M.tr[i] >= 0) { xb = xOf(M.tr[i]); yb = laneY(M.to[i]); }
        else { xb = xa + 12; yb = ya + Math.sign(laneY(M.to[i]) - ya) * Math.min(L.laneH * 0.45, 14); }
        take('msg', i, segDist(px, py, xa, ya, xb, yb));
      }
      if (best) return best;
      const t = tOf(px);
      for (let i = 0; i < C.n; i++) {
        const t1 = C.t1[i] >= 0 ? C.t1[i] : TMAX;
        if (t >= C.t0[i] && t <= t1 && laneOf.has(C.node[i]) &&
            Math.abs(laneY(C.node[i]) - py) < L.laneH / 2) return { k: 'crash', i };
      }
      return null;
    }
    for (const g of L.groups) {
      if (py < g.y || py >= g.y + g.n * L.rowH) continue;
      const row = Math.floor((py - g.y) / L.rowH);
      const s = g.s;
      const a = lowerBound(s.pm, ta), b = upperBound(s.t0, tb);
      let best = null;
      for (let i = a; i < b; i++) {
        if (s.node[i] !== g.node || s.row[i] !== row || s.e[i] < ta || !spanOk(s, i)) continue;
        /* the shortest span under the pointer */
        if (best === null || s.e[i] - s.t0[i] < s.e[best] - s.t0[best]) best = i;
      }
      if (best !== null) return { k: s === R ? 'rpc' : 'work', i: best };
    }
    return null;
  }

  /* ---- details ------------------------------------------------------- */
  const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' }[c]));
  const tbl = (rows) => '<table>' + rows.map(([k, v]) =>
    '<tr><td>' + esc(k) + '</td><td>' + esc(v) + '</td></tr>').join('') + '</table>';
  /* bit n % 64 of a fault mask stands for node n */
  const masks = (m) => {
    const bit = (b) => b < 53 && Math.floor(m / Math.pow(2, b)) % 2 === 1;
    const out = nodeIds.filter((id) => id >= 0 && bit(id % 64)).map(nname);
    return out.join(', ') || '-';
  };
  const rrefId = (c, l) => 'RRef(' + c + ':' + l + ')';

  function details() {
    const d = el('det');
    if (!sel) { d.innerHTML = 'Click a message, span or marker.'; return; }
    const i = sel.i;
    let h = '';
    switch (sel.k) {
      case 'msg':
        h = tbl([['kind', 'message (out_send -> in_frame)'], ['type', typeName(M.type[i]) + ' (' + M.type[i] + ')'],
          ['from', nname(M.from[i])], ['to', nname(M.to[i])], ['message id', M.id[i]],
          ['frame size', M.size[i] + ' B'], ['sent', fmtT(M.ts[i])],
          ['received', M.tr[i] >= 0 ? fmtT(M.tr[i]) : 'never (lost)'],
          ['latency', M.tr[i] >= 0 ? fmtT(M.tr[i] - M.ts[i]) : '-']]);
        break;
      case 'rpc':
        h = tbl([['kind', 'rpc (rpc_begin -> rpc_end)'], ['call', str(R.name[i])],
          ['caller', nname(R.node[i])], ['callee', nname(R.peer[i])], ['request id', R.xid[i]],
          ['timeout', R.aux[i] + ' ms'], ['begin', fmtT(R.t0[i])],
          ['end', R.t1[i] >= 0 ? fmtT(R.t1[i]) : 'never'],
          ['duration', R.t1[i] >= 0 ? fmtT(R.t1[i] - R.t0[i]) : '-'],
          ['result', R.t1[i] >= 0 ? errName(R.end[i]) : 'open']]);
        break;
      case 'work':
        h = tbl([['kind', 'server work (out_execute -> in_job_done)'], ['function', str(W.name[i])],
          ['server', nname(W.node[i])], ['caller', nname(W.peer[i])], ['request id', W.xid[i]],
          ['call kind', W.aux[i]], ['start', fmtT(W.t0[i])],
          ['done', W.t1[i] >= 0 ? fmtT(W.t1[i]) : 'never'],
          ['duration', W.t1[i] >= 0 ? fmtT(W.t1[i] - W.t0[i]) : '-'],
          ['result kind', W.t1[i] >= 0 ? (W.end[i] ? 'remote result' : 'response') : '-']]);
        break;
      case 'fault':
        h = tbl([['kind', 'fault (70)'], ['fault', str(F.name[i])],
          ['node', F.node[i] < 0 ? 'link fault (-1)' : nname(F.node[i])], ['time', fmtT(F.t[i])],
          ['mask a', masks(F.a[i])], ['mask b', masks(F.b[i])]]);
        break;
      case 'reset':
        h = tbl([['kind', 'connection reset (in_conn_closed)'], ['node', nname(X.node[i])],
          ['connection', X.conn[i]], ['error', errName(X.err[i])], ['reason', str(X.reason[i])],
          ['time', fmtT(X.t[i])]]);
        break;
      case 'crash':
        h = tbl([['kind', 'crashed interval'], ['node', nname(C.node[i])], ['crash', fmtT(C.t0[i])],
          ['restart', C.t1[i] >= 0 ? fmtT(C.t1[i]) : 'never']]);
        break;
      case 'rref': {
        h = tbl([['kind', 'rref (50)'], ['action', str(Q.name[i])], ['node', nname(Q.node[i])],
          ['RRef', rrefId(Q.kc[i], Q.kl[i])], ['fork', rrefId(Q.fc[i], Q.fl[i])], ['time', fmtT(Q.t[i])]]);
        h += '<h2>lifecycle of ' + rrefId(Q.kc[i], Q.kl[i]) + '</h2><table class="life">';
        for (let j = 0; j < Q.n; j++) {
          if (Q.kc[j] !== Q.kc[i] || Q.kl[j] !== Q.kl[i]) continue;
          h += '<tr data-q="' + j + '"' + (j === i ? ' class="cur"' : '') + '><td>' + esc(fmtT(Q.t[j])) +
            '</td><td>' + esc(nname(Q.node[j])) + '</td><td>' + esc(str(Q.name[j])) +
            '</td><td>fork ' + esc(Q.fc[j] + ':' + Q.fl[j]) + '</td></tr>';
        }
        h += '</table>';
        break;
      }
    }
    d.innerHTML = h;
    for (const tr of d.querySelectorAll('tr[data-q]'))
      tr.onclick = () => { select({ k: 'rref', i: +tr.dataset.q }, true); };
  }

  function itemTime(s) {
    switch (s.k) {
      case 'msg': return [M.ts[s.i], M.tr[s.i] >= 0 ? M.tr[s.i] : M.ts[s.i]];
      case 'rpc': return [R.t0[s.i], R.e[s.i]];
      case 'work': return [W.t0[s.i], W.e[s.i]];
      case 'fault': return [F.t[s.i], F.t[s.i]];
      case 'reset': return [X.t[s.i], X.t[s.i]];
      case 'rref': return [Q.t[s.i], Q.t[s.i]];
      case 'crash': return [C.t0[s.i], C.t1[s.i] >= 0 ? C.t1[s.i] : TMAX];
    }
    return [v0, v1];
  }
  function select(s, center) {
    sel = s;
    if (s && center) {
      const [a, b] = itemTime(s);
      const w = Math.max(v1 - v0 > (b - a) * 1.5 ? v1 - v0 : (b - a) * 3, 2000);
      const w2 = Math.min(w, TMAX * 1.02);
      v0 = (a + b) / 2 - w2 / 2; v1 = v0 + w2;
    }
    details();
    redraw();
  }

  /* ---- interaction --------------------------------------------------- */
  let drag = null;
  cv.addEventListener('wheel', (e) => {
    e.preventDefault();
    const r = cv.getBoundingClientRect();
    const x = Math.max(GUT, e.clientX - r.left);
    const t = tOf(x);
    const f = Math.exp((e.deltaMode ? e.deltaY * 30 : e.deltaY) * 0.0015);
    let w = (v1 - v0) * f;
    w = Math.max(50, Math.min(TMAX * 4, w));
    v0 = t - ((x - GUT) / (Wd - GUT - 8)) * w;
    v1 = v0 + w;
    moving();
  }, { passive: false });
  cv.addEventListener('mousedown', (e) => {
    drag = { x: e.clientX, y: e.clientY, v0, v1, moved: false };
  });
  window.addEventListener('mousemove', (e) => {
    if (!drag) return;
    const dx = e.clientX - drag.x;
    if (Math.abs(dx) > 3 || Math.abs(e.clientY - drag.y) > 3) drag.moved = true;
    if (!drag.moved) return;
    const dt = (dx / (Wd - GUT - 8)) * (drag.v1 - drag.v0);
    v0 = drag.v0 - dt; v1 = drag.v1 - dt;
    moving();
  });
  window.addEventListener('mouseup', (e) => {
    if (!drag) return;
    const moved = drag.moved;
    drag = null;
    if (moved) return;
    const r = cv.getBoundingClientRect();
    select(pick(e.clientX - r.left, e.clientY - r.top), false);
  });
  window.addEventListener('resize', () => { layout(); redraw(); });
  window.addEventListener('keydown', (e) => {
    if (e.target.tagName === 'INPUT') return;
    const w = v1 - v0;
    if (e.key === 'ArrowLeft') { v0 -= w / 10; v1 -= w / 10; moving(); }
    if (e.key === 'ArrowRight') { v0 += w / 10; v1 += w / 10; moving(); }
    if (e.key === '+' || e.key === '=') { v0 += w / 4; v1 -= w / 4; moving(); }
    if (e.key === '-') { v0 -= w / 2; v1 += w / 2; moving(); }
  });

  /* filters */
  const fw = el('f-worker');
  nodeIds.forEach((id, i) => { const o = document.createElement('option'); o.value = id; o.textContent = nodeNames[i]; fw.appendChild(o); });
  const ft = el('f-type');
  const typesSeen = new Set(M.type);
  D.msgTypes.forEach((n, t) => { if (!typesSeen.has(t)) return; const o = document.createElement('option'); o.value = t; o.textContent = n; ft.appendChild(o); });
  fw.onchange = () => { filt.worker = fw.value === '' ? null : +fw.value; layout(); redraw(); };
  ft.onchange = () => { filt.type = ft.value === '' ? null : +ft.value; redraw(); };
  /* extent of what a filter matches, to zoom onto it */
  function fitTo(a, b) {
    if (!(b >= a)) return;
    const pad = Math.max((b - a) * 0.1, 1000);
    v0 = a - pad; v1 = b + pad;
  }
  el('f-rpc').onchange = (e) => {
    const v = e.target.value.trim();
    filt.rpc = v === '' || isNaN(+v) ? null : +v;
    e.target.style.background = v !== '' && filt.rpc === null ? '#ffcdd2' : '';
    if (filt.rpc !== null) {
      let a = Infinity, b = -Infinity;
      for (let i = 0; i < R.n; i++) if (R.xid[i] === filt.rpc) { a = Math.min(a, R.t0[i]); b = Math.max(b, R.e[i]); }
      for (let i = 0; i < M.n; i++) if (M.id[i] === filt.rpc) { a = Math.min(a, M.ts[i]); b = Math.max(b, M.end[i]); }
      fitTo(a, b);
    }
    redraw();
  };
  el('f-rref').onchange = (e) => {
    const p = parseRRef(e.target.value);
    filt.rref = p || null;
    e.target.style.background = p === undefined ? '#ffcdd2' : '';
    if (filt.rref) {
      let first = -1;
      for (let i = 0; i < Q.n; i++) if (rrefMatch(i)) { first = i; break; }
      if (first >= 0) { select({ k: 'rref', i: first }, true); return; }
    }
    redraw();
  };
  el('b-fit').onclick = () => { v0 = 0; v1 = TMAX * 1.02; redraw(); };
  function firstFailure() {
    let best = null, bt = Infinity;
    for (let i = 0; i < R.n; i++)
      if (R.t1[i] >= 0 && R.end[i] !== 0 && R.t1[i] < bt) { bt = R.t1[i]; best = { k: 'rpc', i }; }
    if (F.n && F.t[0] < bt) { bt = F.t[0]; best = { k: 'fault', i: 0 }; }
    return best;
  }
  el('b-fail').onclick = () => {
    const f = firstFailure();
    if (!f) { el('det').textContent = 'No failed RPC and no fault in this recording.'; return; }
    filt.worker = null; fw.value = '';
    const [a] = itemTime(f);
    sel = f;
    const w = Math.max(TMAX / 50, 5000);
    v0 = a - w / 2; v1 = a + w / 2;
    layout(); details(); redraw();
  };

  /* legend and summary */
  el('legend').innerHTML = [...typesSeen].sort((a, b) => a - b).map((t) =>
    '<span><i style="background:' + typeColor(t) + '"></i>' + esc(typeName(t)) + '</span>').join('') +
    '<span><i style="background:#e53935"></i>lost (x) / failed RPC</span>' +
    '<span><i style="background:#8e24aa"></i>reset</span>' +
    '<span><i style="background:#fb8c00"></i>fault</span>' +
    '<span><i style="background:rgba(229,57,53,0.3)"></i>crashed</span>' +
    '<span><i style="background:#43a047"></i>RRef event</span>' +
    '<span><i style="background:#bdbdbd"></i>never ended</span>';
  const run = D.run;
  el('summary').innerHTML = tbl([['file', D.file], ['backend', run.backend], ['scenario', run.scenario],
    ['seed', run.seed], ['commit', run.commit], ['events', D.events], ['messages', M.n + ' (' + nlost + ' lost)'],
    ['RPCs', R.n], ['server spans', W.n], ['faults', F.n], ['resets', X.n], ['crashes', C.n],
    ['RRef events', Q.n], ['duration', fmtT(TMAX)]]);
  document.title = 'drpc viz: ' + (run.scenario || D.file);
  el('title').textContent = 'drpc viz: ' + (run.scenario || D.file) + (run.seed !== '' ? ' seed ' + run.seed : '');

  layout();
  draw();
  /* for tests and the console */
  window.drpcViz = { D, M, R, W, F, X, C, Q, redraw, select, firstFailure };
  /* The test hook (viz/browser.js): what the last frame showed, the view,
   * and where an item is drawn in client coordinates, so that a test can
   * click it with real mouse events. */
  window.drpcViewer = {
    lanes: NL,
    laneNames: nodeNames.slice(),
    stats: () => Object.assign({}, last),
    view: () => [v0, v1],
    setView(a, b) { v0 = a; v1 = b; redraw(); },
    drawNow() { draw(); return last.ms; },
    selected: () => (sel ? { k: sel.k, i: sel.i } : null),
    typeColor,
    /* the point at fraction u along message i as drawn (a lost one: its
     * stub), in client coordinates; null when its lanes are not shown */
    msgPoint(i, u) {
      if (!laneOf.has(M.from[i]) || !laneOf.has(M.to[i])) return null;
      const r = cv.getBoundingClientRect();
      const xa = xOf(M.ts[i]), ya = laneY(M.from[i]);
      let xb, yb;
      if (M.tr[i] >= 0) { xb = xOf(M.tr[i]); yb = laneY(M.to[i]); }
      else { xb = xa + 12; yb = ya + Math.sign(laneY(M.to[i]) - ya) * Math.min(L.laneH * 0.45, 14); }
      return { x: r.left + xa + u * (xb - xa), y: r.top + ya + u * (yb - ya), ax: r.left + xa,
        ay: r.top + ya, bx: r.left + xb, by: r.top + yb };
    },
    /* the middle of span i ('rpc' or 'work') as drawn, client coordinates */
    spanPoint(kind, i) {
      const s = kind === 'rpc' ? R : W;
      const g = L.gOf.get((kind === 'rpc' ? 'r' : 'w') + s.node[i]);
      if (!g) return null;
      const r = cv.getBoundingClientRect();
      const xa = Math.max(GUT, xOf(s.t0[i])), xb = Math.min(Wd, xOf(s.e[i]));
      return { x: r.left + (xa + xb) / 2, y: r.top + g.y + (s.row[i] + 0.5) * L.rowH };
    },
    /* what a click at client (x, y) would select, without selecting it */
    hit(x, y) {
      const r = cv.getBoundingClientRect();
      const p = pick(x - r.left, y - r.top);
      return p ? { k: p.k, i: p.i } : null;
    },
    /* messages the current frame shows (window and filters), in order */
    visibleMessages() {
      const out = [];
      for (let i = 0; i < M.n; i++)
        if (M.ts[i] <= v1 && M.end[i] >= v0 && M.lf[i] >= 0 && M.lt[i] >= 0 && msgOk(i)) out.push(i);
      return out;
    },
  };
})();

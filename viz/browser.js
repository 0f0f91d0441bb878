// Drives the page `drpc viz` writes in a real headless Chromium.
//
//   node viz/browser.js check VIEW.html --out DIR [--expect k=v,...]
//   node viz/browser.js perf VIEW.html [--frames N]
//   node viz/browser.js shot VIEW.html OUT.png [--size WxH] [--press BUTTON-ID]
//
// check: loads the page and checks it against counts taken from the
// embedded JSON (and --expect, counted from the recording by the caller):
// lanes, arrows, lost messages; a real mouse click on an arrow shows its
// details; wheel zoom and drag pan move the view; the worker, message
// type, RPC id and RRef filters show what they should; "first failure"
// selects something. Screenshots go to DIR. perf: draw time per frame
// while zooming and panning (requestAnimationFrame). shot: one screenshot.
//
// Two drivers, chosen with --driver (or DRPC_VIZ_DRIVER): playwright-core
// (--playwright DIR: where `npm install playwright-core` put node_modules)
// and a fallback that speaks the W3C WebDriver protocol to chromedriver
// over HTTP. Both are thin adapters (open, evaluate, click, wheel, drag,
// type into a field, choose an option, screenshot): every check is a
// function below, evaluated in the page, or a comparison of what those
// return.
// --chromium and --chromedriver name the binaries (default /usr/bin/...).
// Exit 0 ok, 1 a check failed, 2 bad usage.
'use strict';
const fs = require('fs');
const path = require('path');
const net = require('net');
const { spawn } = require('child_process');

/* ---- command line ------------------------------------------------------ */

function usage(msg) {
  if (msg) console.error('viz/browser.js: ' + msg);
  console.error('usage: node viz/browser.js check|perf|shot VIEW.html [OUT.png] [--out DIR] ' +
    '[--driver playwright|webdriver] [--playwright DIR] [--chromium BIN] [--chromedriver BIN] ' +
    '[--expect k=v,...] [--frames N] [--size WxH] [--press BUTTON-ID]');
  process.exit(2);
}
const argv = process.argv.slice(2);
const pos = [];
const opt = {
  driver: process.env.DRPC_VIZ_DRIVER || '', playwright: '', out: '.', expect: '',
  chromium: '/usr/bin/chromium', chromedriver: '/usr/bin/chromedriver', frames: '90', size: '1400x860',
  press: '',
};
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (a.startsWith('--')) {
    const k = a.slice(2);
    if (!(k in opt) || i + 1 >= argv.length) usage('bad option ' + a);
    opt[k] = argv[++i];
  } else pos.push(a);
}
const mode = pos[0];
if (!['check', 'perf', 'shot'].includes(mode) || !pos[1] || (mode === 'shot' && !pos[2])) usage();
const page = path.resolve(pos[1]);
if (!fs.existsSync(page)) usage('no such page: ' + page);
const m = /^(\d+)x(\d+)$/.exec(opt.size);
if (!m) usage('--size WxH');
const VW = +m[1], VH = +m[2];

/* ---- driver 1: playwright-core ---------------------------------------- */

async function playwrightDriver() {
  let pw;
  try {
    pw = require(require.resolve('playwright-core', { paths: [opt.playwright || process.cwd()] }));
  } catch (e) {
    throw new Error('playwright-core not found under ' + (opt.playwright || '.') + ': ' + e.message);
  }
  const version = require(require.resolve('playwright-core/package.json',
    { paths: [opt.playwright || process.cwd()] })).version;
  const browser = await pw.chromium.launch({
    executablePath: opt.chromium, headless: true,
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
  });
  const pg = await browser.newPage({ viewport: { width: VW, height: VH }, deviceScaleFactor: 1 });
  const errors = [];
  pg.on('pageerror', (e) => errors.push(String(e)));
  return {
    name: 'playwright-core ' + version,
    errors,
    open: async (url) => { await pg.goto(url); },
    eval: (fn, arg) => pg.evaluate(fn, arg),
    click: (x, y) => pg.mouse.click(x, y),
    wheel: async (x, y, dy) => { await pg.mouse.move(x, y); await pg.mouse.wheel(0, dy); },
    drag: async (x0, y0, x1, y1) => {
      await pg.mouse.move(x0, y0); await pg.mouse.down();
      await pg.mouse.move(x1, y1, { steps: 8 }); await pg.mouse.up();
    },
    /* typing into a text field and pressing Enter; choosing an option */
    fill: async (sel, text) => { await pg.locator(sel).fill(text); await pg.locator(sel).press('Enter'); },
    select: async (sel, value) => { await pg.selectOption(sel, value); },
    screenshot: (file) => pg.screenshot({ path: file }),
    close: () => browser.close(),
  };
}

/* ---- driver 2: W3C WebDriver over HTTP to chromedriver ---------------- */

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function webdriverDriver() {
  if (!fs.existsSync(opt.chromedriver)) throw new Error('no chromedriver at ' + opt.chromedriver);
  const port = await freePort();
  const proc = spawn(opt.chromedriver, ['--port=' + port], { stdio: 'ignore' });
  const base = 'http://127.0.0.1:' + port;
  async function req(method, p, body) {
    const r = await fetch(base + p, {
      method, headers: { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const j = await r.json();
    /* an error is a non-200 status (a result may well hold "error") */
    if (r.status !== 200) throw new Error('webdriver ' + p + ': ' + r.status + ' ' + JSON.stringify(j.value));
    return j.value;
  }
  let ready = false;
  for (let i = 0; i < 100 && !ready; i++) {
    try { ready = (await req('GET', '/status')).ready; } catch (e) { await sleep(100); }
  }
  if (!ready) { proc.kill(); throw new Error('chromedriver did not start'); }
  let sid;
  try {
    const s = await req('POST', '/session', {
      capabilities: {
        alwaysMatch: {
          browserName: 'chrome',
          'goog:chromeOptions': {
            binary: opt.chromium,
            args: ['--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu',
              '--window-size=' + VW + ',' + VH, '--force-device-scale-factor=1'],
          },
        },
      },
    });
    sid = s.sessionId;
  } catch (e) { proc.kill(); throw e; }
  const S = '/session/' + sid;
  const version = (await req('GET', '/status')).build.version;
  const pointer = (acts) => req('POST', S + '/actions', {
    actions: [{ type: 'pointer', id: 'mouse', parameters: { pointerType: 'mouse' }, actions: acts }],
  });
  const find = async (css) => Object.values(await req('POST', S + '/element', { using: 'css selector', value: css }))[0];
  const at = (x, y) => ({ type: 'pointerMove', x: Math.round(x), y: Math.round(y), origin: 'viewport', duration: 0 });
  return {
    name: 'webdriver (chromedriver ' + version + ')',
    errors: [],
    open: async (url) => {
      await req('POST', S + '/url', { url });
      /* the viewport: make it VW x VH whatever the window decorations */
      const [iw, ih] = await req('POST', S + '/execute/sync',
        { script: 'return [innerWidth, innerHeight]', args: [] });
      if (iw !== VW || ih !== VH) {
        const r = await req('GET', S + '/window/rect');
        await req('POST', S + '/window/rect', { width: r.width + VW - iw, height: r.height + VH - ih });
      }
    },
    eval: (fn, arg) => req('POST', S + '/execute/sync',
      { script: 'return (' + fn.toString() + ')(arguments[0]);', args: [arg === undefined ? null : arg] }),
    click: (x, y) => pointer([at(x, y), { type: 'pointerDown', button: 0 }, { type: 'pointerUp', button: 0 }]),
    wheel: (x, y, dy) => req('POST', S + '/actions', {
      actions: [{ type: 'wheel', id: 'wheel', actions: [
        { type: 'scroll', x: Math.round(x), y: Math.round(y), deltaX: 0, deltaY: dy, origin: 'viewport' }] }],
    }),
    drag: (x0, y0, x1, y1) => {
      const acts = [at(x0, y0), { type: 'pointerDown', button: 0 }];
      for (let k = 1; k <= 8; k++) acts.push(at(x0 + ((x1 - x0) * k) / 8, y0 + ((y1 - y0) * k) / 8));
      acts.push({ type: 'pointerUp', button: 0 });
      return pointer(acts);
    },
    fill: async (sel, text) => {
      const e = await find(sel);
      await req('POST', S + '/element/' + e + '/clear', {});
      /* typed, then Enter (U+E007) */
      await req('POST', S + '/element/' + e + '/value', { text: text + '\uE007' });
    },
    select: async (sel, value) => {
      const e = await find(sel + ' option[value="' + value + '"]');
      await req('POST', S + '/element/' + e + '/click', {});
    },
    screenshot: async (file) => fs.writeFileSync(file, Buffer.from(await req('GET', S + '/screenshot'), 'base64')),
    close: async () => {
      try { await req('DELETE', S); } finally { proc.kill(); }
    },
  };
}

/* ---- functions evaluated in the page ---------------------------------- */
/* Each takes one JSON argument and returns JSON; they may only use what
 * the page offers (the DOM, window.drpcViewer). */

/* Waits two animation frames so that a requested redraw has happened. */
function pgSettle() {
  return new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(() => r(true))));
}

/* Counts taken straight from the embedded JSON (not from the viewer's
 * structures): lanes, messages between two lanes, lost ones, by worker,
 * type and request id, RRef events by key, and the viewer's state. */
function pgInfo() {
  if (!window.drpcTestErrors) {
    window.drpcTestErrors = [];
    window.addEventListener('error', (e) => window.drpcTestErrors.push(String(e.message)));
  }
  const D = JSON.parse(document.getElementById('drpc-data').textContent);
  const lanes = new Set(D.nodes.id);
  const msgs = [];
  for (let i = 0; i < D.msgs.from.length; i++)
    if (lanes.has(D.msgs.from[i]) && lanes.has(D.msgs.to[i]))
      msgs.push({ from: D.msgs.from[i], to: D.msgs.to[i], type: D.msgs.type[i], id: D.msgs.id[i], lost: D.msgs.lat[i] === null });
  const rrefs = {};
  for (let i = 0; i < D.rrefs.t.length; i++) {
    const k = D.rrefs.kc[i] + ':' + D.rrefs.kl[i];
    rrefs[k] = (rrefs[k] || 0) + 1;
  }
  const byType = {};
  for (const x of msgs) byType[x.type] = (byType[x.type] || 0) + 1;
  const cv = document.getElementById('cv').getBoundingClientRect();
  return {
    lanes: D.nodes.id.length, laneIds: D.nodes.id, laneNames: D.nodes.name, msgTypes: D.msgTypes,
    msgs: msgs.length, lost: msgs.filter((x) => x.lost).length, byType,
    byWorker: D.nodes.id.map((w) => msgs.filter((x) => x.from === w || x.to === w).length),
    rpcIds: D.rpcs.xid, msgIds: msgs.map((x) => x.id), workIds: D.work.xid,
    rrefs, faults: D.faults.t.length, resets: D.resets.t.length, crashes: D.crashes.node.length,
    canvas: { x: cv.left, y: cv.top, w: cv.width, h: cv.height },
    hook: !!window.drpcViewer,
    viewerLanes: window.drpcViewer && window.drpcViewer.lanes,
    stats: window.drpcViewer && window.drpcViewer.stats(),
  };
}

function pgStats() {
  return { stats: window.drpcViewer.stats(), view: window.drpcViewer.view(), sel: window.drpcViewer.selected(),
    errors: window.drpcTestErrors || [],
    det: document.getElementById('det').innerText, status: document.getElementById('status').textContent };
}

function pgButton(id) { document.getElementById(id).click(); return true; }

/* Zooms onto a received message that no other drawn message comes near
 * (so a click at its middle can only mean it), draws, and returns its
 * middle in client coordinates with what the details should say; also
 * whether the canvas there has the message type's colour. */
function pgIsolatedArrow() {
  const V = window.drpcViewer;
  const D = JSON.parse(document.getElementById('drpc-data').textContent);
  const dist = (px, py, s) => {
    const dx = s.bx - s.ax, dy = s.by - s.ay, l2 = dx * dx + dy * dy;
    let u = l2 ? ((px - s.ax) * dx + (py - s.ay) * dy) / l2 : 0;
    u = Math.max(0, Math.min(1, u));
    return Math.hypot(s.ax + u * dx - px, s.ay + u * dy - py);
  };
  let t = 0;
  const ts = D.msgs.dts.map((d) => (t += d));
  const cands = [];
  for (let i = 0; i < ts.length; i++)
    if (D.msgs.lat[i] !== null && D.msgs.lat[i] > 0 && D.msgs.from[i] !== D.msgs.to[i]) cands.push(i);
  /* spread the tries over the run */
  const step = Math.max(1, Math.floor(cands.length / 60));
  for (let c = 0; c < cands.length; c += step) {
    const i = cands[c], lat = D.msgs.lat[i];
    V.setView(ts[i] - lat * 2, ts[i] + lat * 3);
    V.drawNow();
    const me = V.msgPoint(i, 0.5);
    if (!me) continue;
    let ok = true;
    for (const j of V.visibleMessages()) {
      if (j === i) continue;
      const s = V.msgPoint(j, 0);
      if (s && dist(me.x, me.y, s) < 12) { ok = false; break; }
    }
    const vr = document.getElementById('cv').getBoundingClientRect();
    if (!ok || me.x < vr.left + 110 || me.x > vr.right - 20) continue;
    /* the colour under the middle of the arrow: the most covered pixel
     * there, read as a palette colour blended with the background, must
     * be the message type's colour (a thin line is antialiased) */
    const cv = document.getElementById('cv');
    const dpr = cv.width / vr.width;
    const px = cv.getContext('2d').getImageData(Math.round((me.x - vr.left) * dpr) - 2,
      Math.round((me.y - vr.top) * dpr) - 2, 5, 5).data;
    const rgb = (h) => [1, 3, 5].map((o) => parseInt(h.slice(o, o + 2), 16));
    const bg = [px[0], px[1], px[2]];
    for (let k = 0; k < px.length; k += 4) /* the lightest pixel */
      if (px[k] + px[k + 1] + px[k + 2] > bg[0] + bg[1] + bg[2]) bg.splice(0, 3, px[k], px[k + 1], px[k + 2]);
    let cover = -1, pix = null;
    for (let k = 0; k < px.length; k += 4) {
      const dv = Math.abs(px[k] - bg[0]) + Math.abs(px[k + 1] - bg[1]) + Math.abs(px[k + 2] - bg[2]);
      if (dv > cover) { cover = dv; pix = [px[k], px[k + 1], px[k + 2]]; }
    }
    const fit = (col) => { /* residual of pix = bg + a * (col - bg) */
      const c = rgb(col), d = c.map((v, j) => v - bg[j]), e = pix.map((v, j) => v - bg[j]);
      const dd = d.reduce((u, v) => u + v * v, 0);
      const a = dd ? Math.max(0, Math.min(1, d.reduce((u, v, j) => u + v * e[j], 0) / dd)) : 0;
      return Math.hypot(...e.map((v, j) => v - a * d[j]));
    };
    const want = V.typeColor(D.msgs.type[i]);
    let nearest = want;
    for (let t = 0; t < D.msgTypes.length; t++)
      if (fit(V.typeColor(t)) < fit(nearest)) nearest = V.typeColor(t);
    const name = (id) => D.nodes.name[D.nodes.id.indexOf(id)];
    return { i, x: me.x, y: me.y, id: D.msgs.id[i], type: D.msgTypes[D.msgs.type[i]],
      from: name(D.msgs.from[i]), to: name(D.msgs.to[i]), colour: want, nearest, pixel: pix, background: bg, coverage: cover };
  }
  return null;
}

/* Zooms onto a failed RPC (closed with an error) that a click at its
 * middle would select, and returns that point, what the details should
 * say, and whether the canvas there is the failure red. */
function pgFailedRpc() {
  const V = window.drpcViewer;
  const D = JSON.parse(document.getElementById('drpc-data').textContent);
  let t = 0;
  const t0 = D.rpcs.dt0.map((d) => (t += d));
  const cands = [];
  for (let i = 0; i < t0.length; i++)
    if (D.rpcs.dur[i] !== null && D.rpcs.end[i] !== 0) cands.push(i);
  const step = Math.max(1, Math.floor(cands.length / 40));
  for (let c = 0; c < cands.length; c += step) {
    const i = cands[c], dur = Math.max(D.rpcs.dur[i], 1000);
    V.setView(t0[i] - dur, t0[i] + 2 * dur);
    V.drawNow();
    const p = V.spanPoint('rpc', i);
    const h = p && V.hit(p.x, p.y);
    if (!h || h.k !== 'rpc' || h.i !== i) continue;
    const cv = document.getElementById('cv');
    const vr = cv.getBoundingClientRect(), dpr = cv.width / vr.width;
    const px = cv.getContext('2d').getImageData(Math.round((p.x - vr.left) * dpr) - 2,
      Math.round((p.y - vr.top) * dpr) - 2, 5, 5).data;
    let red = 0;
    for (let k = 0; k < px.length; k += 4) if (px[k] === 0xe5 && px[k + 1] === 0x39 && px[k + 2] === 0x35) red++;
    return { i, x: p.x, y: p.y, call: D.strings[D.rpcs.name[i]], xid: D.rpcs.xid[i],
      error: D.errors[D.rpcs.end[i]] || null, code: D.rpcs.end[i], red, failed: cands.length };
  }
  return { failed: cands.length };
}

/* Per-frame timings while the view zooms and pans as wheel events and
 * drags move it (dispatched to the page's own handlers, one per frame):
 * the viewer's own draw time (the JavaScript that issues the canvas
 * calls), that plus rasterising them, and the time between animation
 * frames (16.7 ms at 60 Hz is the floor). Phases: panning
 * with the whole run in view, zooming from the whole run in to 1/2000 of
 * it and out again, redrawing it whole at rest, and panning at 1/20 of
 * it. The busy part: 1st to 99th percentile of the send times. */
function pgPerf(a) {
  const V = window.drpcViewer;
  const cv = document.getElementById('cv');
  const ctx = cv.getContext('2d');
  const r = cv.getBoundingClientRect();
  const x = r.left + r.width * 0.6, y = r.top + r.height * 0.3;
  const q = (xs, p) => { const s = xs.slice().sort((u, v) => u - v); return +s[Math.min(s.length - 1, Math.floor(p * s.length))].toFixed(1); };
  const sum = (xs) => ({ median: q(xs, 0.5), p95: q(xs, 0.95), max: q(xs, 1) });
  const wheel = (dy) => cv.dispatchEvent(new WheelEvent('wheel', { clientX: x, clientY: y, deltaY: dy, bubbles: true, cancelable: true }));
  const pan = (dx) => {
    cv.dispatchEvent(new MouseEvent('mousedown', { clientX: x, clientY: y, bubbles: true }));
    window.dispatchEvent(new MouseEvent('mousemove', { clientX: x - dx, clientY: y, bubbles: true }));
    window.dispatchEvent(new MouseEvent('mouseup', { clientX: x - dx, clientY: y, bubbles: true }));
  };
  /* one phase: setup, then n frames each doing step(k) */
  const phase = (setup, n, step) => new Promise((resolve) => {
    setup();
    const draws = [], rasters = [], gaps = [], shown = [], arrows = [];
    let k = 0, prev = 0;
    function frame(ts) {
      if (prev) {
        /* this callback runs right after the viewer's draw: reading a
         * pixel back makes the canvas rasterise what draw issued */
        const t0 = performance.now();
        ctx.getImageData(0, 0, 1, 1);
        const st = V.stats();
        rasters.push(st.ms + performance.now() - t0);
        gaps.push(ts - prev); draws.push(st.ms); shown.push(st.visible + st.spans); arrows.push(st.arrows);
      }
      prev = ts;
      if (k >= n) {
        resolve({ frames: gaps.length, items_in_view: sum(shown), arrows_drawn: sum(arrows), draw_ms: sum(draws),
          draw_and_raster_ms: sum(rasters), frame_interval_ms: sum(gaps) });
        return;
      }
      step(k++);
      requestAnimationFrame(frame);
    }
    requestAnimationFrame(frame);
  });
  const fit = () => document.getElementById('b-fit').click();
  const n = a.frames;
  /* the busy part of the run: 1st to 99th percentile of the send times */
  const D = JSON.parse(document.getElementById('drpc-data').textContent);
  let t = 0;
  const ts = D.msgs.dts.map((d) => (t += d));
  const pct = (p) => ts[Math.min(ts.length - 1, Math.floor(p * ts.length))];
  const b0 = pct(0.01), b1 = pct(0.99), mid = pct(0.5);
  const busy = () => V.setView(b0, b1);
  /* wheel steps: exp(dy * 0.0015) each; n/2 steps in to 1/1000, n/2 out */
  const zoomStep = Math.log(1000) / (n / 2) / 0.0015;
  return (async () => {
    const out = { busy_ns: [b0, b1] };
    out.pan_whole_run = await phase(fit, n, (k) => pan(k % 2 ? 2 : -2));
    out.pan_busy_part = await phase(busy, n, (k) => pan(k < n / 2 ? 10 : -10));
    out.zoom_in_and_out = await phase(() => {
      /* the median message under the pointer */
      const w = b1 - b0, u = (x - r.left - 96) / (r.width - 96 - 8);
      V.setView(mid - u * w, mid - u * w + w);
    }, n, (k) => wheel(k < n / 2 ? -zoomStep : zoomStep));
    /* the whole picture (nothing moving): what a frame costs at rest */
    out.busy_part_at_rest = await phase(busy, 20, (k) => V.setView(b0 + k, b1 + k));
    out.pan_at_1_20 = await phase(() => {
      const w = (b1 - b0) / 20;
      V.setView(mid - w / 2, mid + w / 2);
    }, n, (k) => pan(k < n / 2 ? 25 : -25));
    return out;
  })();
}

/* ---- the test --------------------------------------------------------- */

let failures = 0;
function check(ok, what, detail) {
  console.log((ok ? 'ok   ' : 'FAIL ') + what + (detail !== undefined ? ': ' + JSON.stringify(detail) : ''));
  if (!ok) failures++;
}

async function runCheck(d) {
  const shots = path.resolve(opt.out);
  fs.mkdirSync(shots, { recursive: true });
  const shot = async (name) => { const f = path.join(shots, name); await d.screenshot(f); console.log('     screenshot ' + f); };
  const t0 = Date.now();
  await d.open('file://' + page);
  await d.eval(pgSettle);
  const info = await d.eval(pgInfo);
  check(info.hook, 'the page loads and its viewer starts (window.drpcViewer)');
  if (!info.hook) return;
  console.log('     recording: ' + JSON.stringify({ lanes: info.lanes, msgs: info.msgs, lost: info.lost,
    faults: info.faults, resets: info.resets, crashes: info.crashes, rrefs: Object.keys(info.rrefs).length }));
  /* the caller's counts from the recording itself (SQL) */
  for (const kv of opt.expect.split(',').filter(Boolean)) {
    const [k, v] = kv.split('=');
    check(info[k] === +v, 'embedded data has ' + k + ' = ' + v + ' as the recording', info[k]);
  }
  check(info.faults > 0 && info.resets > 0 && info.lost > 0, 'the recording has faults, resets and lost messages');
  await shot('01-loaded.png');

  /* lanes and arrows of the whole run */
  let st = (await d.eval(pgStats)).stats;
  check(info.viewerLanes === info.lanes && st.lanes === info.lanes, 'lanes drawn = workers', [st.lanes, info.lanes]);
  check(st.visible === info.msgs, 'messages shown = messages between workers', [st.visible, info.msgs]);
  check(st.lost === info.lost, 'lost messages marked = sends never received', [st.lost, info.lost]);
  check(st.arrows > 0 && st.arrows <= info.msgs - info.lost, 'arrows drawn (ones on the same pixels merged)',
    [st.arrows, info.msgs - info.lost]);

  /* a real click on an arrow shows its details */
  const a = await d.eval(pgIsolatedArrow);
  check(a !== null, 'found an arrow no other comes near');
  if (a) {
    check(a.coverage > 40 && a.nearest === a.colour, 'the canvas has the message type colour under the arrow',
      { colour: a.colour, nearest: a.nearest, pixel: a.pixel, background: a.background });
    await d.click(a.x, a.y);
    await d.eval(pgSettle);
    const s = await d.eval(pgStats);
    check(s.sel && s.sel.k === 'msg' && s.sel.i === a.i, 'clicking at the arrow selects it', s.sel);
    const det = s.det;
    check(det.includes('out_send -> in_frame') && det.includes(a.type) && det.includes(a.from) &&
      det.includes(a.to) && new RegExp('message id\\s+' + a.id + '\\b').test(det),
    'the details panel shows the message (type, from, to, id)', det.replace(/\s+/g, ' ').slice(0, 200));
    await shot('02-arrow-clicked.png');
  }

  /* a real click on a failed RPC's span shows it with its error */
  const fr = await d.eval(pgFailedRpc);
  check(fr.failed > 0 && fr.i !== undefined, 'found a failed RPC a click can reach', fr.failed);
  if (fr.i !== undefined) {
    check(fr.red > 0, 'a failed RPC is drawn red', fr);
    check(fr.error !== null && /^DRPC_E/.test(fr.error), 'the page names its error code', [fr.code, fr.error]);
    await d.click(fr.x, fr.y);
    await d.eval(pgSettle);
    const s = await d.eval(pgStats);
    check(s.sel && s.sel.k === 'rpc' && s.sel.i === fr.i, 'clicking the span selects the call', s.sel);
    check(s.det.includes(fr.call) && s.det.includes(String(fr.error)) &&
      new RegExp('request id\\s+' + fr.xid + '\\b').test(s.det),
    'the details panel shows the call, its id and its error', s.det.replace(/\s+/g, ' ').slice(0, 240));
    await shot('02b-failed-rpc-clicked.png');
  }

  /* wheel zoom and drag pan with real input events */
  await d.eval(pgButton, 'b-fit');
  await d.eval(pgSettle);
  const cx = info.canvas.x + info.canvas.w * 0.6, cy = info.canvas.y + info.canvas.h * 0.3;
  const { view: v0, sel: selBefore } = await d.eval(pgStats);
  await d.wheel(cx, cy, -400);
  await d.eval(pgSettle);
  const v1 = (await d.eval(pgStats)).view;
  check(v1[1] - v1[0] < (v0[1] - v0[0]) * 0.8, 'the wheel zooms in', [v0, v1]);
  await d.drag(cx, cy, cx - 200, cy);
  await d.eval(pgSettle);
  const v2 = (await d.eval(pgStats)).view;
  check(v2[0] > v1[0] && Math.abs((v2[1] - v2[0]) - (v1[1] - v1[0])) < 1e-6 * (v1[1] - v1[0]) + 1,
    'dragging left pans later in time', [v1, v2]);
  const s2 = await d.eval(pgStats);
  check(JSON.stringify(s2.sel) === JSON.stringify(selBefore), 'a drag does not change the selection', [selBefore, s2.sel]);

  /* filters: worker */
  const wi = Math.min(1, info.lanes - 1);
  await d.select('#f-worker', String(info.laneIds[wi]));
  await d.eval(pgButton, 'b-fit');
  await d.eval(pgSettle);
  st = (await d.eval(pgStats)).stats;
  check(st.visible === info.byWorker[wi], 'worker filter ' + info.laneNames[wi] + ': only its messages',
    [st.visible, info.byWorker[wi]]);
  await shot('03-worker-filter.png');
  await d.select('#f-worker', '');

  /* message type: the least frequent one */
  const types = Object.entries(info.byType).sort((p, q) => p[1] - q[1]);
  const [ty, tn] = types[0];
  await d.select('#f-type', ty);
  await d.eval(pgSettle);
  st = (await d.eval(pgStats)).stats;
  check(st.visible === tn, 'type filter ' + info.msgTypes[ty] + ': only that type', [st.visible, tn]);
  await d.select('#f-type', '');

  /* RPC id: one with both messages and a call */
  const rid = info.rpcIds.find((x) => info.msgIds.filter((y) => y === x).length >= 2);
  check(rid !== undefined, 'an RPC id with messages exists');
  if (rid !== undefined) {
    await d.fill('#f-rpc', String(rid));
    await d.eval(pgSettle);
    const s = await d.eval(pgStats);
    const nm = info.msgIds.filter((y) => y === rid).length;
    const ns = info.rpcIds.filter((y) => y === rid).length + info.workIds.filter((y) => y === rid).length;
    check(s.stats.visible === nm, 'RPC id filter ' + rid + ': its messages, zoomed onto', [s.stats.visible, nm]);
    check(s.stats.spans >= 1 && s.stats.spans <= ns, 'RPC id filter: its calls and work', [s.stats.spans, ns]);
    check(s.view[1] - s.view[0] < v0[1] - v0[0], 'RPC id filter zooms in', s.view);
    await shot('04-rpc-filter.png');
    await d.fill('#f-rpc', '');
  }

  /* RRef: the one with the most events */
  const rr = Object.entries(info.rrefs).sort((p, q) => q[1] - p[1])[0];
  if (rr) {
    await d.fill('#f-rref', rr[0]);
    await d.eval(pgSettle);
    const s = await d.eval(pgStats);
    const rows = (s.det.match(/\n/g) || []).length;
    check(s.sel && s.sel.k === 'rref' && s.det.includes('lifecycle of RRef(' + rr[0] + ')'),
      'RRef filter ' + rr[0] + ': selects its first event, shows its lifecycle', s.sel);
    const lifeRows = await d.eval(() => document.querySelectorAll('#det table.life tr').length);
    check(lifeRows === rr[1], 'the lifecycle lists all its events', [lifeRows, rr[1], rows]);
    await shot('05-rref-filter.png');
    await d.fill('#f-rref', '');
  } else {
    console.log('     (no RRef events in this recording: RRef filter not checked)');
  }

  /* first failure, then everything back */
  await d.eval(pgButton, 'b-fail');
  await d.eval(pgSettle);
  const f = await d.eval(pgStats);
  check(f.sel && (f.sel.k === 'fault' || f.sel.k === 'rpc'), 'first failure selects a fault or a failed RPC', f.sel);
  await shot('06-first-failure.png');
  await d.eval(pgButton, 'b-fit');
  await d.eval(pgSettle);
  st = (await d.eval(pgStats)).stats;
  check(st.visible === info.msgs, 'filters cleared: all messages again', [st.visible, info.msgs]);
  const errors = d.errors.concat((await d.eval(pgStats)).errors);
  check(errors.length === 0, 'no errors in the page', errors);
  console.log('     ' + (Date.now() - t0) + ' ms in the browser');
}

async function main() {
  const which = opt.driver || (opt.playwright ? 'playwright' : 'webdriver');
  if (!['playwright', 'webdriver'].includes(which)) usage('--driver playwright|webdriver');
  if (!fs.existsSync(opt.chromium)) { console.error('no chromium at ' + opt.chromium); process.exit(1); }
  const d = which === 'playwright' ? await playwrightDriver() : await webdriverDriver();
  console.log('driver: ' + d.name);
  try {
    if (mode === 'check') {
      await runCheck(d);
    } else if (mode === 'shot') {
      await d.open('file://' + page);
      await d.eval(pgSettle);
      if (opt.press) { /* e.g. b-fail: the first failure, selected */
        const b = await d.eval((id) => {
          const r = document.getElementById(id) && document.getElementById(id).getBoundingClientRect();
          return r ? { x: r.left + r.width / 2, y: r.top + r.height / 2 } : null;
        }, opt.press);
        if (!b) usage('no button ' + opt.press);
        await d.click(b.x, b.y);
        await d.eval(pgSettle);
      }
      await d.screenshot(path.resolve(pos[2]));
      console.log('wrote ' + pos[2]);
    } else {
      await d.open('file://' + page);
      await d.eval(pgSettle);
      const info = await d.eval(pgInfo);
      const r = await d.eval(pgPerf, { frames: +opt.frames });
      console.log(JSON.stringify({ messages: info.msgs, lanes: info.lanes, first_frame: info.stats, ...r }));
    }
  } finally {
    await d.close();
  }
  if (failures) { console.log(failures + ' check(s) failed'); process.exit(1); }
}
main().catch((e) => { console.error('viz/browser.js: ' + (e && e.stack ? e.stack : e)); process.exit(1); });

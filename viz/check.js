// Checks a page written by `drpc viz` (node viz/check.js VIEW.html): the
// embedded JSON parses and holds messages and spans, and the viewer script
// runs against a stub DOM and canvas (draw, pick, filters, first failure)
// without throwing. Prints the counts. Used by tests/run_viz.sh when node
// is installed.
'use strict';
const fs = require('fs');
const html = fs.readFileSync(process.argv[2], 'utf8');
const m = /<script type="application\/json" id="drpc-data">([\s\S]*?)<\/script>/.exec(html);
if (!m) throw new Error('no embedded drpc-data');
const D = JSON.parse(m[1]);
const n = (o) => Object.values(o).map((a) => a.length);
for (const k of ['msgs', 'rpcs', 'work', 'faults', 'resets', 'crashes', 'rrefs']) {
  const lens = n(D[k]);
  if (lens.some((l) => l !== lens[0])) throw new Error(k + ': columns differ in length');
}
const msgs = D.msgs.dts.length, rpcs = D.rpcs.dt0.length, work = D.work.dt0.length;
const lost = D.msgs.lat.filter((t) => t === null).length;
for (let i = 0; i < msgs; i++) {
  if (D.msgs.dts[i] < 0) throw new Error('messages out of time order at ' + i);
  if (D.msgs.lat[i] !== null && D.msgs.lat[i] < 0 && D.run.backend === 'sim')
    throw new Error('message ' + i + ' received before it was sent');
}
for (const k of ['rpcs', 'work'])
  for (let i = 0; i < D[k].dt0.length; i++)
    if (D[k].dt0[i] < 0 || (D[k].dur[i] !== null && D[k].dur[i] < 0))
      throw new Error(k + ' ' + i + ': span out of order');
if (!(msgs > 0)) throw new Error('no messages');
if (!(rpcs > 0 && work > 0)) throw new Error('no spans');

// Run the viewer with stubs.
const scripts = [...html.matchAll(/<script>([\s\S]*?)<\/script>/g)].map((x) => x[1]);
if (scripts.length !== 1) throw new Error('expected one inline viewer script');
const noop = () => {};
const ctx = {};
for (const k of ['clearRect', 'fillRect', 'strokeRect', 'beginPath', 'moveTo', 'lineTo', 'stroke',
  'fill', 'rect', 'clip', 'save', 'restore', 'setLineDash', 'arc', 'fillText', 'setTransform'])
  ctx[k] = noop;
const els = {};
function elem(id) {
  if (!els[id]) {
    els[id] = {
      id, value: '', style: {}, dataset: {}, innerHTML: '', textContent: '',
      clientWidth: 1200, clientHeight: 700, width: 0, height: 0, tagName: 'DIV',
      children: [], handlers: {},
      getContext: () => ctx, appendChild(c) { this.children.push(c); },
      addEventListener(ev, f) { this.handlers[ev] = f; },
      getBoundingClientRect: () => ({ left: 0, top: 0 }),
      querySelectorAll: () => [],
    };
  }
  return els[id];
}
els['drpc-data'] = { textContent: m[1] };
const winHandlers = {};
let frames = [];
global.document = { getElementById: elem, createElement: () => ({}), title: '' };
global.window = { devicePixelRatio: 1, addEventListener: (ev, f) => { winHandlers[ev] = f; } };
global.requestAnimationFrame = (f) => frames.push(f);
global.performance = { now: () => Date.now() };
new Function(scripts[0])();
const V = global.window.drpcViz;
const flush = () => { const f = frames; frames = []; f.forEach((g) => g()); };
const t0 = Date.now();
// zoom in around the middle, pan, click around
const cv = els.cv;
for (let i = 0; i < 5; i++) cv.handlers.wheel({ preventDefault: noop, clientX: 600, deltaY: -200, deltaMode: 0 });
flush();
cv.handlers.mousedown({ clientX: 600, clientY: 100 });
winHandlers.mousemove({ clientX: 500, clientY: 100 });
winHandlers.mouseup({ clientX: 500, clientY: 100 });
for (let y = 30; y < 700; y += 17) {
  cv.handlers.mousedown({ clientX: 640, clientY: y });
  winHandlers.mouseup({ clientX: 640, clientY: y });
}
flush();
els['b-fail'].onclick();
flush();
els['f-worker'].value = String(D.nodes.id[0]); els['f-worker'].onchange();
els['f-type'].value = '2'; els['f-type'].onchange();
els['f-rpc'].onchange({ target: { value: rpcs ? String(D.rpcs.xid[0]) : '', style: {} } });
els['f-rref'].onchange({ target: { value: D.rrefs.kc.length ? D.rrefs.kc[0] + ':' + D.rrefs.kl[0] : '', style: {} } });
flush();
// clear the filters and draw the whole run (the largest frame)
els['f-worker'].value = ''; els['f-worker'].onchange();
els['f-type'].value = ''; els['f-type'].onchange();
els['f-rpc'].onchange({ target: { value: '', style: {} } });
els['f-rref'].onchange({ target: { value: '', style: {} } });
els['b-fit'].onclick();
flush();
const ff = V.firstFailure();
console.log(JSON.stringify({ events: D.events, nodes: D.nodes.name, msgs, lost, rpcs, work,
  faults: D.faults.t.length, resets: D.resets.t.length, crashes: D.crashes.node.length,
  rrefs: D.rrefs.t.length, first_failure: ff && ff.k, status: els.status.textContent,
  viewer_ms: Date.now() - t0 }));

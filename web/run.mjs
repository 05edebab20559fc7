// scripts/browser-test's driver: serves DIR on loopback and drives Debian's Chromium
// (headless, WebGPU on SwiftShader's Vulkan) through playwright-core:
//   1. harness.html: waits for the page's report, prints it beside the native one with time
//      ratios;
//   2. index.html, the visualiser: it starts; its Patterns heatmap (N = 77, ALiBi, causal) is
//      checked in the page against the f64 oracle and, from a screenshot, pixel by pixel
//      against the colours of the engine's probabilities; then the MoBA and DSA routing maps
//      (N = 320, rows 256..320 × keys 0..256) the same way, their choices against the oracle's; Decode and Routing
//      measure; screenshots of the page are left in DIR (visualiser*.png);
//   3. index.html again in a page without WebGPU: it must say so.
// Exits non-zero on a page error, a console error, a failed case or check.
//
//   node web/run.mjs DIR SEED REPEATS NATIVE_JSON [TIMEOUT_S]
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');

const [dir, seed, repeats, nativeFile, timeoutS = '240'] = process.argv.slice(2);
if (!dir || !seed || !repeats || !nativeFile) {
  console.error('usage: node web/run.mjs DIR SEED REPEATS NATIVE_JSON [TIMEOUT_S]');
  process.exit(2);
}
const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const types = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm' };

// static files of DIR only, on 127.0.0.1 at a free port
const server = http.createServer((req, res) => {
  const rel = decodeURIComponent(new URL(req.url, 'http://x').pathname).replace(/^\/+/, '') || 'index.html';
  const file = path.resolve(dir, rel);
  if (!file.startsWith(path.resolve(dir) + path.sep) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { 'content-type': types[path.extname(file)] ?? 'application/octet-stream' });
  fs.createReadStream(file).pipe(res);
});
await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
const origin = `http://127.0.0.1:${server.address().port}`;
const url = `${origin}/harness.html?seed=${seed}&repeats=${repeats}`;

const problems = [];
// Page errors, console errors and console warnings count as problems: the browser reports
// WebGPU validation errors (which make a command buffer invalid, so results are stale) as
// warnings. Only eframe's notice that the adapter is a software rasteriser is expected.
const expectedWarning = /Software rasterizer detected/;
function watch(page, who) {
  page.on('pageerror', (e) => problems.push(`${who}: page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() !== 'error' && m.type() !== 'warning') return;
    console.log(`${who} ${m.type()}: ${m.text()}`);
    if (m.type() === 'error' || !expectedWarning.test(m.text())) problems.push(`${who}: console ${m.type()}: ${m.text()}`);
  });
}

// the app's state, through the module index.html exposes (window.longctx)
const appState = (page) => page.evaluate(() => JSON.parse(window.longctx.state()));

// waits until `done(state)` holds, or fails with the last state
async function until(page, what, done, seconds) {
  const t0 = Date.now();
  let s;
  for (;;) {
    s = await appState(page);
    if (done(s)) return s;
    if (Date.now() - t0 > seconds * 1000) throw new Error(`${what}: not after ${seconds} s; state ${JSON.stringify(s)}`);
    await page.waitForTimeout(250);
  }
}

// The Patterns heatmap at `rect` (n × n cells, 1:1) against the engine: the GPU's
// probabilities against the f64 oracle's and the screenshot's colours against the app's;
// problems are recorded, the check returned.
async function heatmapCheck(page, what, n, rect) {
  await page.waitForTimeout(500); // a frame or two after the texture arrived
  const [l, t, r, b] = rect;
  const clip = { x: Math.floor(l), y: Math.floor(t), width: Math.ceil(r) - Math.floor(l), height: Math.ceil(b) - Math.floor(t) };
  const png = await page.screenshot({ clip });
  const tolerance = 3;
  const check = await page.evaluate(([b64, x, y, tol]) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    return JSON.parse(window.longctx.check_heatmap(bytes, x, y, tol));
  }, [png.toString('base64'), clip.x, clip.y, tolerance]);
  console.log(`visualiser ${what}: ${n} cells drawn at ${clip.width}×${clip.height} px; ` +
    `GPU vs f64 oracle probabilities: worst abs err ${check.oracle_worst_abs.toExponential(2)}; ` +
    `screenshot vs the engine's colours: worst channel diff ${check.worst_channel}/255, ` +
    `${check.mismatched} cells over ${tolerance}, ${check.distinct_colours} distinct colours`);
  if (!(check.oracle_worst_abs <= 1e-5)) problems.push(`visualiser ${what}: oracle error ${check.oracle_worst_abs}`);
  if (check.mismatched > 0) problems.push(`visualiser ${what}: ${check.mismatched} of ${check.cells} cells off by more than ${tolerance}`);
  if (check.distinct_colours < 16) problems.push(`visualiser ${what}: only ${check.distinct_colours} colours`);
  return check;
}

async function visualiser(browser) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 }, deviceScaleFactor: 1 });
  watch(page, 'visualiser');
  const t0 = Date.now();
  try {
    await page.goto(`${origin}/index.html`);
    await page.waitForFunction(() => window.longctxStatus, null, { timeout: 120000, polling: 250 });
    const status = await page.evaluate(() => window.longctxStatus);
    if (status !== 'running') {
      const text = await page.evaluate(() => document.getElementById('message').innerText);
      throw new Error(`the visualiser did not start (${status}): ${text}`);
    }
    const started = await appState(page);
    console.log(`visualiser: started in ${((Date.now() - t0) / 1000).toFixed(1)} s on ${started.adapter}`);

    // the heatmap: N = 77 (not a multiple of any tile) at one pixel per (row, key)
    const n = 77;
    await page.evaluate((n) => window.longctx.set_patterns(n, true), n);
    const s = await until(page, 'the heatmap', (s) => s.patterns_error || (s.heatmap[0] === n && s.heatmap[1] === n && s.heatmap_rect), 120);
    if (s.patterns_error) throw new Error(`Patterns: ${s.patterns_error}`);
    await heatmapCheck(page, 'heatmap', `${n}×${n}`, s.heatmap_rect);
    await page.screenshot({ path: path.join(dir, 'visualiser.png') });

    // the routing maps: MoBA's blocks and DSA's keys, chosen on the GPU, drawn, and checked
    // against the oracle's choice: N = 320 (five blocks of 64; the rows of the last read four
    // of them; DSA's rows 64 keys each), viewed 1:1 where the choice skips keys (rows
    // 256..320, keys 0..256)
    const m = 320;
    await page.evaluate((m) => window.longctx.set_patterns(m, false), m);
    for (const pattern of ['Moba', 'Dsa']) {
      const t3 = Date.now();
      await page.evaluate((p) => window.longctx.set_pattern(p), pattern);
      const c = await until(page, `the ${pattern} problem`, (s) => s.patterns_error ||
        (s.pattern === pattern && s.keys_read !== null && s.heatmap_rect), 180);
      if (c.patterns_error) {
        problems.push(`visualiser ${pattern}: ${c.patterns_error}`);
        continue;
      }
      await page.evaluate(() => window.longctx.set_view(256, 320, 0, 256));
      const r = await until(page, `the ${pattern} routing map`, (s) => s.patterns_error ||
        (s.heatmap[0] === 256 && s.heatmap[1] === 64 && s.heatmap_rect), 180);
      if (r.patterns_error) {
        problems.push(`visualiser ${pattern}: ${r.patterns_error}`);
        continue;
      }
      const check = await heatmapCheck(page, `${pattern} routing map`, '64×256', r.heatmap_rect);
      const [differ, ties] = check.choice || [null, false];
      console.log(`visualiser ${pattern}: keys read ${(100 * r.keys_read).toFixed(1)} % of causal's; ` +
        `choice vs the f64 oracle's: ${differ} rows differ, all float32 ties: ${ties} ` +
        `(${((Date.now() - t3) / 1000).toFixed(1)} s)`);
      if (!ties) problems.push(`visualiser ${pattern}: the choice differs from the oracle's beyond ties (${differ} rows)`);
      if (!(r.keys_read < 1)) problems.push(`visualiser ${pattern}: keys read ${r.keys_read}: nothing was skipped`);
      await page.screenshot({ path: path.join(dir, `visualiser_${pattern.toLowerCase()}.png`) });
    }

    // Memory traffic's measurement: naive and flash, instrumented, at N = 128…1K
    const t2 = Date.now();
    await page.evaluate(() => window.longctx.measure_traffic());
    const tr = await until(page, 'Memory traffic', (s) => s.traffic.length === 8 || s.traffic_error, 180);
    if (tr.traffic_error) problems.push(`visualiser Memory traffic: ${tr.traffic_error}`);
    else console.log(`visualiser Memory traffic (bytes counted): ${tr.traffic.map(([k, n, b]) => `${k} ${n}: ${b}`).join(', ')} ` +
      `(${((Date.now() - t2) / 1000).toFixed(1)} s)`);

    // the measured panels, on first view (Decode with 8 query heads of dim 64: 8, 2 and 1 kv heads)
    await page.evaluate(() => window.longctx.set_decode(8, 64));
    for (const [tab, done] of [
      ['Decode', (s) => s.decode.length === 9 || (s.decode_message && !s.decode_message.startsWith('measuring'))],
      ['Routing', (s) => s.routing || s.routing_message],
    ]) {
      const t1 = Date.now();
      await page.evaluate((tab) => window.longctx.show(tab), tab);
      const s = await until(page, tab, done, 180);
      const secs = ((Date.now() - t1) / 1000).toFixed(1);
      if (tab === 'Decode') {
        if (s.decode.length !== 9) problems.push(`visualiser Decode: ${s.decode_message}`);
        else console.log(`visualiser Decode: ${s.decode.map(([kv, c, t]) => `${kv} kv heads at ${c}: ${t.toFixed(1)} tokens/s`).join(', ')} (${secs} s)`);
      } else if (!s.routing) problems.push(`visualiser Routing: ${s.routing_message}`);
      else console.log(`visualiser Routing: routed tokens (q, kv, ffn) ${s.routing.join(', ')} (${secs} s)`);
      await page.screenshot({ path: path.join(dir, `visualiser_${tab.toLowerCase()}.png`) });
    }
  } catch (e) {
    problems.push(`visualiser: ${e.message}`);
  } finally {
    await page.close();
  }
}

// a browser without WebGPU (navigator.gpu removed before the page runs) gets the message
async function withoutWebGpu(browser) {
  const context = await browser.newContext();
  await context.addInitScript(() => Object.defineProperty(Navigator.prototype, 'gpu', { get: () => undefined }));
  const page = await context.newPage();
  watch(page, 'no-webgpu page');
  try {
    await page.goto(`${origin}/index.html`);
    await page.waitForFunction(() => window.longctxStatus, null, { timeout: 30000, polling: 100 });
    const status = await page.evaluate(() => window.longctxStatus);
    const text = await page.evaluate(() => document.getElementById('message').innerText);
    const shown = await page.isVisible('#message');
    if (status !== 'no-webgpu' || !shown || !text.includes('needs WebGPU')) {
      problems.push(`without WebGPU the page said (${status}, visible ${shown}): ${text}`);
    } else {
      console.log(`without WebGPU: "${text.split('\n')[0]}"`);
    }
  } finally {
    await context.close();
  }
}

const browser = await chromium.launch({
  executablePath,
  // WebGPU on SwiftShader's Vulkan; ANGLE on SwiftShader composites the WebGPU canvas
  // (without it the canvas's device is lost as soon as it presents: "A valid external
  // Instance reference no longer exists")
  args: ['--headless=new', '--enable-unsafe-webgpu', '--enable-unsafe-swiftshader',
    '--enable-features=Vulkan', '--use-vulkan=swiftshader', '--use-angle=swiftshader'],
});
let report;
try {
  const page = await browser.newPage();
  watch(page, 'harness');
  const t0 = Date.now();
  await page.goto(url);
  await page.waitForFunction(() => window.longctxResult || window.longctxError, null,
    { timeout: Number(timeoutS) * 1000, polling: 250 });
  const error = await page.evaluate(() => window.longctxError);
  if (error) problems.push(`the page failed: ${error}`);
  report = await page.evaluate(() => window.longctxResult);
  if (report) fs.writeFileSync(path.join(dir, 'browser.json'), JSON.stringify(report, null, 1));
  const info = await page.evaluate(() => window.longctxAdapter);
  if (info) console.log(`the page's adapter (GPUAdapterInfo): ${JSON.stringify(info)}`);
  console.log(`browser: ${((Date.now() - t0) / 1000).toFixed(1)} s in the page, Chromium ${browser.version()}`);
  await visualiser(browser);
  await withoutWebGpu(browser);
} finally {
  await browser.close();
  server.close();
}

const native = fs.existsSync(nativeFile) ? JSON.parse(fs.readFileSync(nativeFile, 'utf8')) : null;
if (report) {
  console.log(`seed ${report.seed}; oracle threads in the page: ${report.oracle_threads}; ` +
    `median of ${report.repeats}, submit to done on the host clock; bound ${report.bound}`);
  for (const [who, r] of [['browser', report], ['native', native]]) {
    for (const d of r?.devices ?? []) {
      console.log(`${who} ${d.limits}: ${d.adapter}; ${d.backend}; workgroup storage ${d.workgroup_storage} B, ` +
        `storage binding ${d.storage_binding} B`);
    }
  }
  const key = (r) => `${r.limits}|${r.case}|${r.pass}`;
  const nat = new Map((native?.rows ?? []).map((r) => [key(r), r]));
  const pad = (s, n) => String(s).padEnd(n);
  const num = (x, f) => (typeof x === 'number' && Number.isFinite(x) ? f(x) : String(x));
  console.log([pad('limits', 15), pad('case', 11), pad('shape', 18), pad('pass', 9), pad('tiles', 22),
    pad('rel err', 9), pad('web ms', 9), pad('native ms', 10), 'web/native'].join(' '));
  for (const r of report.rows) {
    const n = nat.get(key(r));
    const ratio = n && Number.isFinite(n.ms) && n.ms > 0 ? (r.ms / n.ms).toFixed(2) : '-';
    console.log([pad(r.limits, 15), pad(r.case, 11), pad(r.shape, 18), pad(r.pass, 9), pad(r.tiles, 22),
      pad(r.rel_err === null ? 'inf' : num(r.rel_err, (x) => x.toExponential(2)), 9), pad(num(r.ms, (x) => x.toFixed(3)), 9),
      pad(n ? num(n.ms, (x) => x.toFixed(3)) : '-', 10), ratio].join(' '));
  }
  // JSON has no infinity: a missing or null error is a failure
  const bad = (r) => r.error || typeof r.rel_err !== 'number' || !(r.rel_err <= report.bound);
  for (const [who, r] of [['browser', report], ['native', native]]) {
    for (const row of (r?.rows ?? []).filter(bad)) {
      problems.push(`${who} ${key(row)}: ${row.error ?? `relative error ${row.rel_err ?? 'inf'} > ${report.bound}`}`);
    }
  }
} else if (!problems.length) {
  problems.push('the page gave no report');
}
if (problems.length) {
  console.error(`FAILED:\n  ${problems.join('\n  ')}`);
  process.exit(1);
}
console.log('browser test passed');

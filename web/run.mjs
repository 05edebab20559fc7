// scripts/browser-test's driver: serves DIR on loopback, loads its index.html in Debian's
// Chromium (headless, WebGPU on SwiftShader's Vulkan) through playwright-core, waits for the
// page's report, prints it beside the native one with time ratios. Exits non-zero on a page
// error, a console error, a failed case or an error over the bound.
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
const url = `http://127.0.0.1:${server.address().port}/index.html?seed=${seed}&repeats=${repeats}`;

const problems = [];
const browser = await chromium.launch({
  executablePath,
  args: ['--headless=new', '--enable-unsafe-webgpu', '--enable-unsafe-swiftshader',
    '--enable-features=Vulkan', '--use-vulkan=swiftshader'],
});
let report;
try {
  const page = await browser.newPage();
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') console.log(`page ${m.type()}: ${m.text()}`);
    if (m.type() === 'error') problems.push(`console error: ${m.text()}`);
  });
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

// Drives the dashboard page (GET /) in Debian's chromium through playwright-core, for
// tests/dashboard.rs. The plan (what the registry holds, what to drain) comes as JSON
// in argv[2]. Prints one `ok ...` line per check passed, then `PASS`; on the first
// failure prints `FAIL: <why>` and exits 1. With `screenshot` in the plan it also
// saves a full-page screenshot, 1280 wide, there once every check passed.
//
// With `history` in the plan it then runs a scale-out and an evacuation on a service of
// its own through the API (registrations and heartbeats of its own instances) and sees
// the page's charts (inline SVG from /v1/history) follow each step; with
// `screenshot_history` it saves that service's section there.
//
// Every wait has a deadline; the browser is closed and its profile removed at the end.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const plan = JSON.parse(process.argv[2] ?? '{}');
const CHROMIUM = plan.chromium ?? '/usr/bin/chromium';
// How long the page may take to show a drain it did not reload for.
const LIVE_UPDATE_MS = plan.live_update_ms ?? 5000;
const STEP_MS = 10000;
// How long the charts may take to show a heartbeat: a sample, then the page's next read.
const HISTORY_MS = plan.history_ms ?? 10000;

const ok = (what) => console.log(`ok ${what}`);
class Failure extends Error {}
const fail = (why) => { throw new Failure(why); };

const profile = mkdtempSync(join(tmpdir(), 'switchboard-dashboard-'));
let context;
const pageErrors = [];
const foreign = [];
const serversRequests = [];
let navigations = 0;

const row = (service, id) => `section[data-service="${service}"] tr[data-id="${id}"]`;

async function waitState(page, service, id, state, timeout) {
  try {
    await page.waitForFunction(
      ([sel, want]) => document.querySelector(sel)?.dataset.state === want,
      [row(service, id), state],
      { timeout, polling: 50 },
    );
  } catch (_) {
    const got = await page.evaluate((sel) => document.querySelector(sel)?.dataset.state ?? 'no row', row(service, id));
    fail(`instance ${id} of ${service}: wanted state ${state} within ${timeout} ms, page shows ${got}`);
  }
}

async function cell(page, selector) {
  return page.evaluate((sel) => {
    const node = document.querySelector(sel);
    return node ? { text: node.textContent.trim(), value: node.dataset.value ?? null } : null;
  }, selector);
}

// A request to the registry with the admin token; JSON in and out.
async function api(method, path, body, headers = {}) {
  const resp = await fetch(`${plan.base}${path}`, {
    method,
    headers: { Authorization: `Bearer ${plan.token}`, 'Content-Type': 'application/json', ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  return { status: resp.status, body: text ? JSON.parse(text) : null };
}

// A scale-out then an evacuation on plan.history.service, each step seen in the charts.
async function checkHistory(page) {
  const svc = plan.history.service;
  const [addrA, addrB, addrC] = plan.history.addresses;
  const section = `section[data-service="${svc}"]`;
  const register = async (address) => {
    const r = await api('POST', `/v1/services/${svc}/instances`, { address, ttl_secs: 300 });
    if (r.status !== 201) fail(`register ${address}: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body;
  };
  const beat = async (inst, connections) => {
    const r = await api('PUT', `/v1/services/${svc}/instances/${inst.id}/heartbeat`, { connections }, { 'X-Lease': inst.lease });
    if (r.status !== 200) fail(`heartbeat ${inst.id}: ${r.status}`);
    return r.body.shed;
  };
  const line = (id) => page.evaluate((sel) => {
    const path = document.querySelector(sel);
    return path ? { last: path.dataset.last, state: path.dataset.state, values: path.dataset.values, d: path.getAttribute('d') } : null;
  }, `${section} svg.instances path[data-id="${id}"]`);
  const waitFor = async (what, predicate, arg) => {
    try {
      await page.waitForFunction(predicate, arg, { timeout: HISTORY_MS, polling: 100 });
    } catch (_) {
      fail(`${what} not shown within ${HISTORY_MS} ms`);
    }
  };
  const waitLine = async (inst, want, what) => {
    const sel = `${section} svg.instances path[data-id="${inst.id}"]`;
    try {
      await page.waitForFunction(([s, w]) => document.querySelector(s)?.dataset.last === w, [sel, String(want)], { timeout: HISTORY_MS, polling: 100 });
    } catch (_) {
      fail(`${what}: the line of ${inst.id} shows ${JSON.stringify(await line(inst.id))}, wanted ${want}`);
    }
  };
  const spark = (series) => page.evaluate((sel) => {
    const node = document.querySelector(sel);
    return node ? { last: node.dataset.last, total: Number(node.dataset.total), second: node.dataset.secondLast } : null;
  }, `${section} .spark[data-series="${series}"]`);
  const numbers = (values) => String(values ?? '').split(',').filter((v) => v !== '').map(Number);

  // Two servers carry the load.
  const a = await register(addrA);
  const b = await register(addrB);
  await beat(a, 300);
  await beat(b, 290);
  await page.locator(`${section} .history`).waitFor({ state: 'visible', timeout: HISTORY_MS });
  await waitLine(a, 300, 'first server');
  await waitLine(b, 290, 'second server');
  ok('history charts draw each instance\'s connections');

  // Scale-out: a third joins empty, devices asking /servers are handed it, and the two
  // busy ones are asked to shed until the three are even.
  const c = await register(addrC);
  await beat(c, 0);
  await waitLine(c, 0, 'the new server, empty');
  for (let n = 0; n < 3; n++) {
    const r = await api('GET', `/servers?service=${svc}&limit=1`);
    if (r.body?.servers?.[0]?.address !== addrC) fail(`/servers did not hand out the new server first: ${JSON.stringify(r.body)}`);
  }
  let shed = 0;
  for (const [busy, other, fresh] of [[250, 240, 100], [220, 215, 160], [200, 200, 200]]) {
    shed += await beat(a, busy);
    shed += await beat(b, other);
    await beat(c, fresh);
    await waitLine(c, fresh, 'the new server filling');
    await waitLine(a, busy, 'a busy server emptying');
  }
  if (shed === 0) fail('no heartbeat answer asked to shed during the scale-out');
  const grown = numbers((await line(c.id)).values);
  // From the first sample after its first heartbeat (a sample may fall between the
  // registration and it).
  const seen = numbers((await line(a.id)).values);
  const emptied = seen.slice(Math.max(0, seen.indexOf(300)));
  const rising = grown.every((v, k) => k === 0 || v >= grown[k - 1]);
  const falling = emptied.every((v, k) => k === 0 || v <= emptied[k - 1]);
  if (!rising || grown[0] !== 0 || grown[grown.length - 1] !== 200) fail(`new server's line: ${grown}`);
  if (!falling || emptied[0] !== 300 || emptied[emptied.length - 1] !== 200) fail(`busy server's line: ${emptied}`);
  await waitFor('hand-outs and shed hints in the sparklines', ([sel]) => {
    const h = document.querySelector(`${sel} .spark[data-series="hand_outs"]`);
    const s = document.querySelector(`${sel} .spark[data-series="shed_hints"]`);
    return Number(h?.dataset.total) >= 3 && Number(s?.dataset.total) >= 1;
  }, [section]);
  const total = await spark('connections');
  if (total?.last !== '600') fail(`total connections sparkline ends at ${JSON.stringify(total)}, wanted 600`);
  ok(`scale-out converging: new server 0 → 200 (${grown.length} samples), busy ones 300 → 200, hand-outs and shed hints counted`);

  // Evacuation: the first server is drained at a pace and empties; it stays draining.
  const drained = await api('POST', `/v1/services/${svc}/instances/${a.id}/drain`, { evacuate_per_sec: 50 });
  if (drained.status !== 200) fail(`drain answered ${drained.status}`);
  if (await beat(a, 100) === 0) fail('an evacuating server was not asked to shed');
  await beat(b, 250);
  await beat(c, 250);
  await waitLine(a, 100, 'the evacuating server draining');
  await beat(a, 0);
  await waitLine(a, 0, 'the evacuated server empty');
  const evacuated = await line(a.id);
  if (evacuated.state !== 'd') fail(`evacuated server's line state ${evacuated.state}, wanted d (draining)`);
  const dashed = await page.evaluate((sel) => getComputedStyle(document.querySelector(sel)).strokeDasharray, `${section} svg.instances path[data-id="${a.id}"]`);
  if (!dashed || dashed === 'none') fail('a draining server\'s line is not dashed');
  const note = await page.evaluate((sel) => document.querySelector(sel)?.textContent ?? '', `${section} .legend li[data-id="${a.id}"]`);
  if (!note.includes('draining')) fail(`legend of the drained server: ${JSON.stringify(note)}`);
  await waitFor('up 2 · draining 1', ([sel]) => {
    const s = document.querySelector(`${sel} .spark[data-series="up"]`);
    return s?.dataset.last === '2' && s?.dataset.secondLast === '1';
  }, [section]);
  ok('evacuation drained to 0, dashed and marked draining; up 2, draining 1');
  const label = await page.evaluate((sel) => document.querySelector(sel)?.getAttribute('aria-label') ?? '', `${section} svg.instances`);
  if (!label.includes(addrC)) fail(`chart's aria-label does not name the servers: ${label}`);
  ok('the chart has a text alternative');

  if (plan.screenshot_history) {
    await page.mouse.move(0, 0);
    await page.locator(section).screenshot({ path: plan.screenshot_history });
    ok(`history screenshot saved to ${plan.screenshot_history}`);
  }
}

async function main() {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    // The HTTPS run's certificate is the test's private CA's.
    ignoreHTTPSErrors: plan.https === true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    viewport: { width: 1280, height: 900 },
    locale: 'en-US',
    timezoneId: 'UTC',
  });
  const page = context.pages()[0] ?? await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on('pageerror', (err) => pageErrors.push(String(err)));
  page.on('console', (msg) => {
    // The browser logs each 401 the page gets before the token is entered.
    if (msg.type() === 'error' && !/status of 401/.test(msg.text())) pageErrors.push(`console: ${msg.text()}`);
  });
  page.on('framenavigated', (frame) => { if (frame === page.mainFrame()) navigations += 1; });
  page.on('request', (req) => {
    const url = req.url();
    if (!url.startsWith(`${plan.base}/`) && !url.startsWith('data:')) foreign.push(url);
    if (url.startsWith(`${plan.base}/servers`)) {
      serversRequests.push({ url, authorization: req.headers().authorization ?? null });
    }
  });

  await page.goto(`${plan.base}/`);
  ok('page loaded');

  // The registry has an admin token: the page asks for it (a form, not a prompt).
  await page.locator('#login').waitFor({ state: 'visible' });
  if (await page.getByLabel('Admin token', { exact: true }).count() !== 1) fail('no input labelled "Admin token"');
  ok('asks for the admin token');
  await page.getByLabel('Admin token', { exact: true }).fill('not-the-token');
  await page.getByRole('button', { name: 'Open dashboard' }).click();
  await page.locator('#login-error').waitFor({ state: 'visible' });
  ok('a wrong token is refused and asked again');
  await page.getByLabel('Admin token', { exact: true }).fill(plan.token);
  await page.getByRole('button', { name: 'Open dashboard' }).click();
  await page.locator('#login').waitFor({ state: 'hidden' });
  const stored = await page.evaluate(() => sessionStorage.getItem('switchboard.adminToken'));
  if (stored !== plan.token) fail(`sessionStorage holds ${JSON.stringify(stored)}, not the token`);
  ok('token kept in sessionStorage');

  // Every instance with its state and figures.
  for (const inst of plan.instances) {
    await waitState(page, inst.service, inst.id, inst.state, STEP_MS);
    const address = await cell(page, `${row(inst.service, inst.id)} [data-field="address"]`);
    if (address?.text !== inst.address) fail(`instance ${inst.id}: address ${JSON.stringify(address)}, wanted ${inst.address}`);
    const conns = await cell(page, `${row(inst.service, inst.id)} [data-field="connections"]`);
    if (conns?.value !== String(inst.connections)) fail(`instance ${inst.id}: connections ${JSON.stringify(conns)}, wanted ${inst.connections}`);
    const zone = await cell(page, `${row(inst.service, inst.id)} [data-field="zone"]`);
    if (inst.zone && zone?.text !== inst.zone) fail(`instance ${inst.id}: zone ${JSON.stringify(zone)}, wanted ${inst.zone}`);
  }
  ok(`${plan.instances.length} instances shown with address, zone, connections and state`);

  // The busiest instance of a service has the full load bar.
  for (const service of new Set(plan.instances.map((i) => i.service))) {
    const widths = await page.evaluate((svc) => Array.from(
      document.querySelectorAll(`section[data-service="${svc}"] tbody .fill`), (f) => f.style.width), service);
    if (!widths.includes('100%')) fail(`service ${service}: no full load bar among ${widths}`);
  }
  ok('load bars relative to each service\'s busiest instance');

  for (const s of plan.services) {
    const sel = `#services-table tr[data-service="${s.name}"]`;
    const conns = await cell(page, `${sel} [data-field="connections"]`);
    if (conns?.value !== String(s.connections)) fail(`service ${s.name}: connections ${JSON.stringify(conns)}, wanted ${s.connections}`);
    const banner = page.locator(`section[data-service="${s.name}"] .banner`);
    if (await banner.isVisible() !== s.self_preservation) {
      fail(`service ${s.name}: self-preservation banner visible=${!s.self_preservation}, wanted ${s.self_preservation}`);
    }
  }
  ok('services table and self-preservation banners');

  for (const f of plan.forwarders) {
    const sel = `#forwarders-table tr[data-listen="${f.listen}"]`;
    const active = await cell(page, `${sel} [data-field="active"]`);
    if (active?.value !== String(f.active)) fail(`forwarder ${f.listen}: active ${JSON.stringify(active)}, wanted ${f.active}`);
  }
  ok('forward listeners with their live counts');

  // Drain one instance through the API; the page must show it without a reload.
  await page.evaluate(() => { window.switchboardSameDocument = true; });
  const drain = plan.drain;
  const started = Date.now();
  const resp = await fetch(`${plan.base}/v1/services/${drain.service}/instances/${drain.id}/drain`, {
    method: 'POST', headers: { Authorization: `Bearer ${plan.token}` },
  });
  if (resp.status !== 200) fail(`drain answered ${resp.status}`);
  await waitState(page, drain.service, drain.id, 'draining', LIVE_UPDATE_MS);
  const tookMs = Date.now() - started;
  if (!await page.evaluate(() => window.switchboardSameDocument === true) || navigations !== 1) {
    fail(`the page reloaded (${navigations} navigations)`);
  }
  ok(`drained instance shown draining after ${tookMs} ms without a reload`);

  // The updates came from blocking queries, with the token, and nothing else.
  const blocking = serversRequests.filter((r) => /[?&]since=\d+/.test(r.url) && /[?&]wait_secs=30\b/.test(r.url));
  if (blocking.length === 0) fail('no blocking query on /servers');
  const unauthenticated = blocking.filter((r) => r.authorization !== `Bearer ${plan.token}`);
  if (unauthenticated.length > 0) fail(`blocking queries without the token: ${unauthenticated.map((r) => r.url)}`);
  if (serversRequests.length > 6 * plan.services.length) fail(`${serversRequests.length} /servers requests: polling too fast`);
  ok(`${serversRequests.length} blocking /servers requests, all with the token`);
  if (foreign.length > 0) fail(`requests outside the registry: ${foreign.join(', ')}`);
  ok('no request outside the registry');
  if (pageErrors.length > 0) fail(`page errors: ${pageErrors.join('; ')}`);
  ok('no page errors');

  if (plan.history) {
    await checkHistory(page);
    if (pageErrors.length > 0) fail(`page errors: ${pageErrors.join('; ')}`);
    if (foreign.length > 0) fail(`requests outside the registry: ${foreign.join(', ')}`);
  }

  if (plan.screenshot) {
    await page.mouse.move(0, 0);
    await page.screenshot({ path: plan.screenshot, fullPage: true });
    ok(`screenshot saved to ${plan.screenshot}`);
  }
}

let code = 0;
try {
  await main();
  console.log('PASS');
} catch (err) {
  console.log(`FAIL: ${err instanceof Failure ? err.message : (err && err.stack) || err}`);
  code = 1;
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
process.exit(code);

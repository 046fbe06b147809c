#!/usr/bin/env node
// A device that asks Switchboard where to connect, then sends a line every PING_SECS and
// checks its echo. It keeps the client reconnect contract (SPEC section 11), so that a
// dead server or a shed round does not become a reconnect storm:
//
// - An attempt: GET /servers and connect to the first server; when it does not answer,
//   ask again and take the first server of the new answer not yet tried in this attempt
//   (each answer counts a hand-out for its first server only), up to the first list's
//   length.
// - After a lost connection: wait a random 0..reconnect_jitter_ms (from the last answer;
//   5000 before any) before the next attempt.
// - After a failed attempt: wait a random 0..min(120 s, 1 s * 2^n) (full-jitter
//   exponential backoff), n failed attempts so far; n is reset by a connection that
//   lasted 60 s.
//
// When the registry is unreachable (or has no server) it uses the forwarder.
// No npm packages.
//
//   node device.js
//
// Env: SWITCHBOARD_SERVER (http://127.0.0.1:8080), SWITCHBOARD_SERVICE (default),
// SWITCHBOARD_FORWARDER (127.0.0.1:6665), PING_SECS (5), SWITCHBOARD_TIME_SCALE (1: a
// positive integer that divides the contract's waits and its 60 s, for tests; the
// printed waits are before the division).
// For an https:// registry: SWITCHBOARD_CA_CERT (PEM: trust only these CAs; else the
// system's roots), SWITCHBOARD_CLIENT_CERT and SWITCHBOARD_CLIENT_KEY (PEM: a client
// certificate, for a registry that asks for one).
'use strict';
const fs = require('node:fs');
const https = require('node:https');
const net = require('node:net');

const REGISTRY = (process.env.SWITCHBOARD_SERVER || 'http://127.0.0.1:8080').replace(/\/$/, '');
const SERVICE = process.env.SWITCHBOARD_SERVICE || 'default';
const FORWARDER = process.env.SWITCHBOARD_FORWARDER || '127.0.0.1:6665';
const PING_MS = Number(process.env.PING_SECS || 5) * 1000;
const CONNECT_TIMEOUT_MS = 2000;
// The reconnect contract's numbers (SPEC section 11), in milliseconds.
const DEFAULT_JITTER_MS = 5000;
const BACKOFF_BASE_MS = 1000;
const BACKOFF_CAP_MS = 120000;
const RESET_AFTER_MS = 60000;

// SWITCHBOARD_TIME_SCALE: every contract wait is divided by it (1 in production).
const TIME_SCALE = (() => {
  const raw = process.env.SWITCHBOARD_TIME_SCALE || '1';
  if (!/^[0-9]+$/.test(raw) || Number(raw) < 1) {
    console.error(`SWITCHBOARD_TIME_SCALE=${raw}: not a positive integer`);
    process.exit(2);
  }
  return Number(raw);
})();

// Sleeps a contract wait of `ms` milliseconds (divided by the time scale).
const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms / TIME_SCALE));

// For an https:// registry, the options of node:https (fetch cannot take a CA without
// npm's undici): verified against SWITCHBOARD_CA_CERT (PEM) when set, else the system's
// roots; with SWITCHBOARD_CLIENT_CERT (and _KEY) it shows that certificate. null for http://.
function tlsOptions() {
  if (!REGISTRY.startsWith('https://')) return null;
  const env = process.env;
  const options = { ALPNProtocols: ['http/1.1'] };
  if (env.SWITCHBOARD_CA_CERT) options.ca = fs.readFileSync(env.SWITCHBOARD_CA_CERT);
  if (env.SWITCHBOARD_CLIENT_CERT) {
    options.cert = fs.readFileSync(env.SWITCHBOARD_CLIENT_CERT);
    options.key = fs.readFileSync(env.SWITCHBOARD_CLIENT_KEY || env.SWITCHBOARD_CLIENT_CERT);
  }
  return options;
}
const TLS = tlsOptions();

// One request: { status, text }. fetch for http://, node:https with TLS for https://.
// Throws (rejects) when the registry is unreachable or its certificate does not verify.
async function request(method, url, headers = {}, body = undefined) {
  if (!TLS) {
    const res = await fetch(url, { method, headers, body, signal: AbortSignal.timeout(5000) });
    return { status: res.status, text: await res.text() };
  }
  return new Promise((resolve, reject) => {
    const req = https.request(url, { method, headers, agent: false, ...TLS }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => { text += chunk; });
      res.on('end', () => resolve({ status: res.statusCode, text }));
      res.on('error', reject);
    });
    const timer = setTimeout(() => req.destroy(new Error('timed out after 5 s')), 5000);
    req.on('close', () => clearTimeout(timer));
    req.on('error', reject);
    req.end(body);
  });
}

let jitterMs = DEFAULT_JITTER_MS; // reconnect_jitter_ms of the last answer

// One GET /servers: { servers } (the ranked addresses), or { why } there are none.
async function ask() {
  let servers;
  try {
    const url = `${REGISTRY}/servers?service=${encodeURIComponent(SERVICE)}`;
    const { status, text } = await request('GET', url);
    if (status < 200 || status > 299) throw new Error(`status ${status}`);
    const answer = JSON.parse(text);
    servers = answer.servers.map((s) => s.address);
    jitterMs = answer.reconnect_jitter_ms ?? DEFAULT_JITTER_MS;
  } catch (err) {
    return { why: `registry unreachable (${err.message})` };
  }
  if (servers.length === 0) return { why: 'no servers' };
  console.log(`servers ${servers.join(' ')}`);
  return { servers };
}

function connect(address) {
  const i = address.lastIndexOf(':');
  const host = address.slice(0, i).replace(/^\[|\]$/g, '');
  const port = Number(address.slice(i + 1));
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host, port, timeout: CONNECT_TIMEOUT_MS });
    sock.once('connect', () => { sock.setTimeout(0); resolve(sock); });
    sock.once('timeout', () => { sock.destroy(); reject(new Error('connect timeout')); });
    sock.once('error', reject);
  });
}

// Pings until the connection is lost; resolves then.
function session(sock) {
  return new Promise((resolve) => {
    let n = 0;
    let expected = '';
    let received = '';
    let next = null;
    const ping = () => {
      expected = `ping ${++n}\n`;
      received = '';
      sock.write(expected);
    };
    sock.setEncoding('utf8');
    sock.setTimeout(PING_MS + 5000, () => sock.destroy(new Error('no echo')));
    sock.on('data', (chunk) => {
      received += chunk;
      if (received.length < expected.length) return;
      if (received !== expected) return sock.destroy(new Error('bad echo'));
      console.log('echo ok');
      next = setTimeout(ping, PING_MS);
    });
    sock.on('error', (err) => console.log(`connection lost: ${err.message}`));
    sock.on('close', (hadError) => {
      clearTimeout(next);
      if (!hadError) console.log('connection lost: closed by the server');
      resolve();
    });
    ping();
  });
}

// One attempt of the contract: { sock, address }, or null when no server answered.
async function attempt() {
  let { servers, why } = await ask();
  if (why) {
    console.log(`${why}; using the forwarder ${FORWARDER}`);
    servers = [FORWARDER];
  }
  const tried = [];
  const picks = servers.length;
  for (let n = 0; n < picks; n++) {
    if (n > 0) {
      const fresh = await ask();
      if (fresh.why) console.log(`${fresh.why}; trying the rest of the last list`);
      else servers = fresh.servers;
    }
    const address = servers.find((a) => !tried.includes(a));
    if (address === undefined) break;
    tried.push(address);
    try {
      const sock = await connect(address);
      console.log(`connected to ${address}`);
      return { sock, address };
    } catch (err) {
      console.log(`cannot connect to ${address}: ${err.message}`);
    }
  }
  return null;
}

async function main() {
  let failures = 0; // failed attempts since the last connection that lasted RESET_AFTER_MS
  for (;;) {
    const connected = await attempt();
    if (connected === null) {
      const cap = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(failures, 7));
      failures += 1;
      const waitMs = Math.floor(Math.random() * cap);
      console.log(`backing off ${waitMs} ms (up to ${cap} ms)`);
      await pause(waitMs);
      continue;
    }
    const since = performance.now();
    await session(connected.sock);
    if ((performance.now() - since) * TIME_SCALE >= RESET_AFTER_MS) failures = 0;
    const waitMs = Math.floor(Math.random() * jitterMs);
    console.log(`reconnecting in ${waitMs} ms`);
    await pause(waitMs);
  }
}

main();

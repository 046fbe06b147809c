#!/usr/bin/env node
// A device that asks Switchboard where to connect: GET /servers, connect to the first
// server that answers (falling back to the next), then send a line every PING_SECS and
// check its echo. After a lost connection it waits a random 0..reconnect_jitter_ms
// before it asks again, so a shed round or a dead server does not become a reconnect
// storm. When the registry is unreachable (or has no server) it uses the forwarder.
// No npm packages.
//
//   node device.js
//
// Env: SWITCHBOARD_SERVER (http://127.0.0.1:8080), SWITCHBOARD_SERVICE (default),
// SWITCHBOARD_FORWARDER (127.0.0.1:6665), PING_SECS (5).
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

let jitterMs = 5000;

async function resolve() {
  try {
    const url = `${REGISTRY}/servers?service=${encodeURIComponent(SERVICE)}`;
    const { status, text } = await request('GET', url);
    if (status < 200 || status > 299) throw new Error(`status ${status}`);
    const answer = JSON.parse(text);
    jitterMs = answer.reconnect_jitter_ms ?? 5000;
    const servers = answer.servers.map((s) => s.address);
    if (servers.length > 0) {
      console.log(`servers ${servers.join(' ')}`);
      return servers;
    }
    console.log(`no servers; using the forwarder ${FORWARDER}`);
  } catch (err) {
    console.log(`registry unreachable (${err.message}); using the forwarder ${FORWARDER}`);
  }
  return [FORWARDER];
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

async function main() {
  for (;;) {
    for (const address of await resolve()) {
      let sock;
      try {
        sock = await connect(address);
      } catch (err) {
        console.log(`cannot connect to ${address}: ${err.message}`);
        continue;
      }
      console.log(`connected to ${address}`);
      await session(sock);
      break;
    }
    const waitMs = Math.floor(Math.random() * jitterMs);
    console.log(`reconnecting in ${waitMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, waitMs));
  }
}

main();

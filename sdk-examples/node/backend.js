#!/usr/bin/env node
// An echo backend that joins Switchboard: it registers, heartbeats its live connection
// count every `heartbeat_secs`, registers again when the registry forgot it (404), closes
// `shed` connections when asked, and deregisters on SIGTERM or Ctrl-C. No npm packages.
//
//   node backend.js [PORT]
//
// Env: SWITCHBOARD_SERVER (http://127.0.0.1:8080), SWITCHBOARD_SERVICE (default),
// PORT (6666; 0 picks a free one), ADVERTISE_HOST (127.0.0.1), TTL_SECS (15).
// For an https:// registry: SWITCHBOARD_CA_CERT (PEM: trust only these CAs; else the
// system's roots), SWITCHBOARD_CLIENT_CERT and SWITCHBOARD_CLIENT_KEY (PEM: a client
// certificate, for a registry that asks for one).
'use strict';
const fs = require('node:fs');
const https = require('node:https');
const net = require('node:net');

const REGISTRY = (process.env.SWITCHBOARD_SERVER || 'http://127.0.0.1:8080').replace(/\/$/, '');
const SERVICE = process.env.SWITCHBOARD_SERVICE || 'default';
const HOST = process.env.ADVERTISE_HOST || '127.0.0.1';
const TTL = Number(process.env.TTL_SECS || 15);
const PORT = Number(process.argv[2] || process.env.PORT || 6666);
const INSTANCES = `${REGISTRY}/v1/services/${SERVICE}/instances`;

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

const live = new Set(); // open sockets; a Set iterates oldest first
let me = null; // the registration answer: id, lease, heartbeat_secs
let timer = null;
let stopping = false;

// One registry request: { status, body }. Throws when the registry is unreachable.
async function call(method, url, body, lease) {
  const headers = { 'content-type': 'application/json' };
  if (lease) headers['x-lease'] = lease;
  const { status, text } = await request(method, url, headers, body && JSON.stringify(body));
  return { status, body: text ? JSON.parse(text) : null };
}

async function register(address) {
  while (!stopping) {
    try {
      const { status, body } = await call('POST', INSTANCES, { address, ttl_secs: TTL });
      if (status === 200 || status === 201) {
        console.log(`registered id=${body.id} heartbeat_secs=${body.heartbeat_secs}`);
        return body;
      }
      console.log(`register answered ${status}`);
    } catch (err) {
      console.log(`registry unreachable: ${err.message}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
  return null;
}

function shed(count) {
  const victims = [...live].slice(0, count); // the oldest
  for (const sock of victims) {
    sock.end(); // graceful: FIN after what is already queued
    setTimeout(() => sock.destroy(), 5000).unref(); // in case the device never closes
  }
  console.log(`shed ${victims.length}`);
}

async function heartbeat(address) {
  try {
    const connections = live.size;
    const { status, body } = await call('PUT', `${INSTANCES}/${me.id}/heartbeat`, { connections }, me.lease);
    if (status === 404) {
      console.log('unknown instance; registering again');
      me = await register(address);
    } else if (status !== 200) {
      console.log(`heartbeat answered ${status}`);
    } else {
      console.log(`heartbeat connections=${connections} shed=${body.shed}`);
      if (body.shed > 0) shed(body.shed);
    }
  } catch (err) {
    console.log(`heartbeat failed: ${err.message}`);
  }
  if (me && !stopping) timer = setTimeout(heartbeat, me.heartbeat_secs * 1000, address);
}

async function shutdown() {
  if (stopping) return;
  stopping = true;
  clearTimeout(timer);
  server.close();
  if (me) {
    try {
      await call('DELETE', `${INSTANCES}/${me.id}`, undefined, me.lease);
      console.log(`deregistered id=${me.id}`);
    } catch (err) {
      console.log(`deregister failed: ${err.message}`);
    }
  }
  for (const sock of live) sock.destroy();
  process.exit(0);
}

const server = net.createServer((sock) => {
  live.add(sock);
  console.log(`accepted ${sock.remoteAddress}:${sock.remotePort} (live ${live.size})`);
  sock.on('error', () => {});
  sock.on('close', () => live.delete(sock));
  sock.pipe(sock); // echo, with backpressure
});

server.listen(PORT, HOST, async () => {
  const address = `${HOST}:${server.address().port}`;
  console.log(`listening on ${address}`);
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
  me = await register(address);
  if (me && !stopping) timer = setTimeout(heartbeat, me.heartbeat_secs * 1000, address);
});

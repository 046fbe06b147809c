#!/usr/bin/env python3
"""A device that asks Switchboard where to connect, then sends a line every PING_SECS and
checks its echo. It keeps the client reconnect contract (SPEC section 11), so that a dead
server or a shed round does not become a reconnect storm:

- An attempt: GET /servers and connect to the first server; when it does not answer, ask
  again and take the first server of the new answer not yet tried in this attempt (each
  answer counts a hand-out for its first server only), up to the first list's length.
- After a lost connection: wait a random 0..reconnect_jitter_ms (from the last answer;
  5000 before any) before the next attempt.
- After a failed attempt: wait a random 0..min(120 s, 1 s * 2^n) (full-jitter exponential
  backoff), n failed attempts so far; n is reset by a connection that lasted 60 s.

When the registry is unreachable (or has no server) it uses the forwarder address.
Standard library only.

    python3 device.py

Env: SWITCHBOARD_SERVER (http://127.0.0.1:8080), SWITCHBOARD_SERVICE (default),
SWITCHBOARD_FORWARDER (127.0.0.1:6665), PING_SECS (5), SWITCHBOARD_TIME_SCALE (1: a
positive integer that divides the contract's waits and its 60 s, for tests; the printed
waits are before the division).
For an https:// registry: SWITCHBOARD_CA_CERT (PEM: trust only these CAs; else the
system's roots), SWITCHBOARD_CLIENT_CERT and SWITCHBOARD_CLIENT_KEY (PEM: a client
certificate, for a registry that asks for one).
"""
import itertools
import json
import os
import random
import select
import socket
import ssl
import sys
import time
import urllib.parse
import urllib.request

REGISTRY = os.environ.get("SWITCHBOARD_SERVER", "http://127.0.0.1:8080").rstrip("/")
SERVICE = os.environ.get("SWITCHBOARD_SERVICE", "default")
FORWARDER = os.environ.get("SWITCHBOARD_FORWARDER", "127.0.0.1:6665")
PING_SECS = float(os.environ.get("PING_SECS", "5"))
CONNECT_TIMEOUT = 2
# The reconnect contract's numbers (SPEC section 11), in milliseconds.
DEFAULT_JITTER_MS = 5000
BACKOFF_BASE_MS = 1000
BACKOFF_CAP_MS = 120_000
RESET_AFTER_MS = 60_000


def log(line):
    print(line, flush=True)


def time_scale():
    """SWITCHBOARD_TIME_SCALE: every contract wait is divided by it (1 in production)."""
    raw = os.environ.get("SWITCHBOARD_TIME_SCALE") or "1"
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        sys.exit(f"SWITCHBOARD_TIME_SCALE={raw!r}: not a positive integer")
    return int(raw)


TIME_SCALE = time_scale()


def pause(ms):
    """Sleeps a contract wait of `ms` milliseconds (divided by the time scale)."""
    time.sleep(ms / 1000 / TIME_SCALE)


def tls_context():
    """For an https:// registry: verified against SWITCHBOARD_CA_CERT (PEM) when set, else
    the system's roots; with SWITCHBOARD_CLIENT_CERT (and _KEY) it shows that certificate."""
    if not REGISTRY.startswith("https://"):
        return None
    context = ssl.create_default_context(cafile=os.environ.get("SWITCHBOARD_CA_CERT") or None)
    context.set_alpn_protocols(["http/1.1"])
    cert = os.environ.get("SWITCHBOARD_CLIENT_CERT")
    if cert:
        context.load_cert_chain(cert, os.environ.get("SWITCHBOARD_CLIENT_KEY") or None)
    return context


TLS = tls_context()  # None for http://
jitter_ms = DEFAULT_JITTER_MS  # reconnect_jitter_ms of the last answer


def ask():
    """One GET /servers: (the ranked addresses, None), or ([], why there are none)."""
    global jitter_ms
    url = f"{REGISTRY}/servers?service={urllib.parse.quote(SERVICE)}"
    try:
        with urllib.request.urlopen(url, timeout=5, context=TLS) as answer:
            body = json.load(answer)
        servers = [s["address"] for s in body["servers"]]
        jitter_ms = body.get("reconnect_jitter_ms", DEFAULT_JITTER_MS)
    except (OSError, ValueError, KeyError, TypeError) as error:
        return [], f"registry unreachable ({error})"
    if not servers:
        return [], "no servers"
    log("servers " + " ".join(servers))
    return servers, None


def dial(address):
    host, _, port = address.rpartition(":")
    try:
        conn = socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT)
        log(f"connected to {address}")
        return conn
    except (OSError, ValueError) as error:
        log(f"cannot connect to {address}: {error}")
        return None


def attempt():
    """One attempt of the contract: (connection, address), or None when no server answered."""
    servers, why = ask()
    if why:
        log(f"{why}; using the forwarder {FORWARDER}")
        servers = [FORWARDER]
    tried = []
    for n in range(len(servers)):
        if n > 0:
            fresh, why = ask()
            if why:
                log(f"{why}; trying the rest of the last list")
            else:
                servers = fresh
        address = next((a for a in servers if a not in tried), None)
        if address is None:
            break
        tried.append(address)
        conn = dial(address)
        if conn:
            return conn, address
    return None


def session(conn):
    """Pings until the connection is lost."""
    conn.settimeout(5)
    with conn, conn.makefile("rb") as lines:
        for n in itertools.count(1):
            line = f"ping {n}\n".encode()
            conn.sendall(line)
            if lines.readline() != line:
                raise ConnectionError("closed or bad echo")
            log("echo ok")
            # Idle until the next ping, but notice at once if the server closes.
            if select.select([conn], [], [], PING_SECS)[0]:
                raise ConnectionError("closed by the server")


def main():
    failures = 0  # failed attempts since the last connection that lasted RESET_AFTER_MS
    while True:
        connected = attempt()
        if connected is None:
            cap = min(BACKOFF_CAP_MS, BACKOFF_BASE_MS << min(failures, 7))
            failures += 1
            wait_ms = random.randrange(cap)
            log(f"backing off {wait_ms} ms (up to {cap} ms)")
            pause(wait_ms)
            continue
        since = time.monotonic()
        try:
            session(connected[0])
        except OSError as error:
            log(f"connection lost: {error}")
        if (time.monotonic() - since) * 1000 * TIME_SCALE >= RESET_AFTER_MS:
            failures = 0
        wait_ms = random.randrange(max(jitter_ms, 1))
        log(f"reconnecting in {wait_ms} ms")
        pause(wait_ms)


if __name__ == "__main__":
    main()

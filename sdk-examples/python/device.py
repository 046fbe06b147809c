#!/usr/bin/env python3
"""A device that asks Switchboard where to connect: GET /servers, connect to the first
server that answers (falling back to the next), then send a line every PING_SECS and
check its echo. After a lost connection it waits a random 0..reconnect_jitter_ms before
it asks again, so a shed round or a dead server does not become a reconnect storm.
When the registry is unreachable (or has no server) it uses the forwarder address.
Standard library only.

    python3 device.py

Env: SWITCHBOARD_SERVER (http://127.0.0.1:8080), SWITCHBOARD_SERVICE (default),
SWITCHBOARD_FORWARDER (127.0.0.1:6665), PING_SECS (5).
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
import time
import urllib.parse
import urllib.request

REGISTRY = os.environ.get("SWITCHBOARD_SERVER", "http://127.0.0.1:8080").rstrip("/")
SERVICE = os.environ.get("SWITCHBOARD_SERVICE", "default")
FORWARDER = os.environ.get("SWITCHBOARD_FORWARDER", "127.0.0.1:6665")
PING_SECS = float(os.environ.get("PING_SECS", "5"))
CONNECT_TIMEOUT = 2


def log(line):
    print(line, flush=True)


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


def resolve(jitter_ms):
    """The ranked addresses and the reconnect jitter (kept from before if not answered)."""
    url = f"{REGISTRY}/servers?service={urllib.parse.quote(SERVICE)}"
    try:
        with urllib.request.urlopen(url, timeout=5, context=TLS) as answer:
            body = json.load(answer)
        servers = [s["address"] for s in body["servers"]]
        jitter_ms = body.get("reconnect_jitter_ms", 5000)
        if servers:
            log("servers " + " ".join(servers))
            return servers, jitter_ms
        log(f"no servers; using the forwarder {FORWARDER}")
    except (OSError, ValueError) as error:
        log(f"registry unreachable ({error}); using the forwarder {FORWARDER}")
    return [FORWARDER], jitter_ms


def connect_first(servers):
    for address in servers:
        host, _, port = address.rpartition(":")
        try:
            conn = socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT)
            log(f"connected to {address}")
            return conn
        except (OSError, ValueError) as error:
            log(f"cannot connect to {address}: {error}")
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
    jitter_ms = 5000
    while True:
        servers, jitter_ms = resolve(jitter_ms)
        conn = connect_first(servers)
        if conn:
            try:
                session(conn)
            except OSError as error:
                log(f"connection lost: {error}")
        wait_ms = random.randrange(max(jitter_ms, 1))
        log(f"reconnecting in {wait_ms} ms")
        time.sleep(wait_ms / 1000)


if __name__ == "__main__":
    main()

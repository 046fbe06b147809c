#!/usr/bin/env python3
"""An echo backend that joins Switchboard: it registers, heartbeats its live connection
count every `heartbeat_secs`, registers again when the registry forgot it (404), closes
`shed` connections when asked, and deregisters on SIGTERM or Ctrl-C. Standard library only.

    python3 backend.py [PORT]

Env: SWITCHBOARD_SERVER (http://127.0.0.1:8080), SWITCHBOARD_SERVICE (default),
PORT (6666; 0 picks a free one), ADVERTISE_HOST (127.0.0.1), TTL_SECS (15).
For an https:// registry: SWITCHBOARD_CA_CERT (PEM: trust only these CAs; else the
system's roots), SWITCHBOARD_CLIENT_CERT and SWITCHBOARD_CLIENT_KEY (PEM: a client
certificate, for a registry that asks for one).
"""
import json
import os
import signal
import socket
import ssl
import sys
import threading
import urllib.error
import urllib.request

REGISTRY = os.environ.get("SWITCHBOARD_SERVER", "http://127.0.0.1:8080").rstrip("/")
SERVICE = os.environ.get("SWITCHBOARD_SERVICE", "default")
HOST = os.environ.get("ADVERTISE_HOST", "127.0.0.1")
TTL = int(os.environ.get("TTL_SECS", "15"))
PORT = int(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PORT", "6666"))
INSTANCES = f"/v1/services/{SERVICE}/instances"

live = []  # open client sockets, oldest first
lock = threading.Lock()
stop = threading.Event()


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


def call(method, path, body=None, lease=None):
    """One registry request: (status, JSON answer or None). Raises OSError if unreachable."""
    headers = {"Content-Type": "application/json"}
    if lease:
        headers["X-Lease"] = lease
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(REGISTRY + path, data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5, context=TLS) as answer:
            text = answer.read()
            return answer.status, json.loads(text) if text else None
    except urllib.error.HTTPError as error:
        return error.code, None


def echo(conn):
    try:
        while data := conn.recv(4096):
            conn.sendall(data)
    except OSError:
        pass
    finally:
        with lock:
            if conn in live:
                live.remove(conn)
        conn.close()


def accept(listener):
    while True:
        conn, peer = listener.accept()
        with lock:
            live.append(conn)
            count = len(live)
        log(f"accepted {peer[0]}:{peer[1]} (live {count})")
        threading.Thread(target=echo, args=(conn,), daemon=True).start()


def shed(count):
    """Closes the `count` oldest connections; their devices reconnect elsewhere."""
    with lock:
        victims = live[:count]
    for conn in victims:
        try:
            conn.shutdown(socket.SHUT_RDWR)  # its echo thread sees EOF and cleans up
        except OSError:
            pass
    log(f"shed {len(victims)}")


def register(address):
    """Registers until it works (or we are stopping); returns the answer or None."""
    while not stop.is_set():
        try:
            status, answer = call("POST", INSTANCES, {"address": address, "ttl_secs": TTL})
            if status in (200, 201):
                log(f"registered id={answer['id']} heartbeat_secs={answer['heartbeat_secs']}")
                return answer
            log(f"register answered {status}")
        except OSError as error:
            log(f"registry unreachable: {error}")
        stop.wait(2)
    return None


def main():
    listener = socket.create_server((HOST, PORT))
    address = "%s:%d" % (HOST, listener.getsockname()[1])
    log(f"listening on {address}")
    threading.Thread(target=accept, args=(listener,), daemon=True).start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    me = register(address)
    while me and not stop.wait(me["heartbeat_secs"]):
        with lock:
            count = len(live)
        try:
            status, answer = call("PUT", f"{INSTANCES}/{me['id']}/heartbeat",
                                  {"connections": count}, me["lease"])
        except OSError as error:
            log(f"heartbeat failed: {error}")
            continue
        if status == 404:
            log("unknown instance; registering again")
            me = register(address)
        elif status != 200:
            log(f"heartbeat answered {status}")
        else:
            log(f"heartbeat connections={count} shed={answer['shed']}")
            if answer["shed"] > 0:
                shed(answer["shed"])
    if me:
        try:
            call("DELETE", f"{INSTANCES}/{me['id']}", lease=me["lease"])
            log(f"deregistered id={me['id']}")
        except OSError as error:
            log(f"deregister failed: {error}")


if __name__ == "__main__":
    main()

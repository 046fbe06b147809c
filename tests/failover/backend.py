#!/usr/bin/env python3
"""A backend for tests/failover.rs: a TCP echo server that registers with a
Switchboard node and heartbeats its live connection count.

    backend.py NAME LISTEN_PORT ADVERTISE_ADDR REGISTRY[,REGISTRY...]

It registers ADVERTISE_ADDR in service `default` through the first registry that
answers, then heartbeats every `heartbeat_secs` and at once when its count changes,
moving to the next registry when one does not answer. A connection silent for 2 s is
closed (the devices ping every 250 ms), so connections whose forwarder died stop
counting. Everything it sees goes to stdout as JSON lines:

    {"ev": "registered", "backend", "id", "status", "via"}   (again on a 404: "reregistered")
    {"ev": "hello", "backend", "peer", "text"}               first line of each connection
    {"ev": "closed", "backend", "peer"}
"""

import http.client
import json
import socket
import sys
import threading
import time

IDLE_SECS = 2.0
HTTP_TIMEOUT = 0.5

lock = threading.Lock()
live = 0
changed = threading.Event()


def emit(**ev):
    with lock:
        print(json.dumps(ev), flush=True)


def request(registry, method, path, body, headers=None):
    """One HTTP request; (status, json or None), or None when it did not answer."""
    host, port = registry.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=HTTP_TIMEOUT)
    try:
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        conn.request(method, path, json.dumps(body), hdrs)
        resp = conn.getresponse()
        data = resp.read()
        try:
            return resp.status, json.loads(data) if data else None
        except ValueError:
            return resp.status, None
    except OSError:
        return None
    finally:
        conn.close()


def serve(conn, peer):
    global live
    with lock:
        live += 1
    changed.set()
    conn.settimeout(IDLE_SECS)
    first = True
    try:
        f = conn.makefile("rb")
        while True:
            line = f.readline()
            if not line:
                break
            if first:
                emit(ev="hello", backend=NAME, peer=peer, text=line.decode().strip())
                first = False
            conn.sendall(line)
    except OSError:
        pass
    finally:
        conn.close()
        with lock:
            live -= 1
        changed.set()
        emit(ev="closed", backend=NAME, peer=peer)


def accept_loop(listener):
    while True:
        conn, (peer, _) = listener.accept()
        threading.Thread(target=serve, args=(conn, peer), daemon=True).start()


def register(registries, start, event):
    """Registers through the first registry that answers; exits after 10 s."""
    deadline = time.monotonic() + 10
    i = start
    while time.monotonic() < deadline:
        via = registries[i % len(registries)]
        got = request(via, "POST", "/v1/services/default/instances",
                      {"address": ADVERTISE})
        if got and got[0] in (200, 201) and got[1]:
            emit(ev=event, backend=NAME, id=got[1]["id"], status=got[0], via=via)
            return got[1], i % len(registries)
        i += 1
        time.sleep(0.1)
    emit(ev="register_failed", backend=NAME)
    sys.exit(2)


def heartbeat_loop(registries):
    reg, current = register(registries, 0, "registered")
    while True:
        changed.wait(timeout=reg["heartbeat_secs"])
        changed.clear()
        with lock:
            count = live
        path = f"/v1/services/default/instances/{reg['id']}/heartbeat"
        for k in range(len(registries)):
            via = registries[(current + k) % len(registries)]
            got = request(via, "PUT", path, {"connections": count},
                          {"X-Lease": reg["lease"]})
            if got is None or got[0] >= 500:
                continue
            current = (current + k) % len(registries)
            if got[0] == 404:
                reg, current = register(registries, current, "reregistered")
            break


if __name__ == "__main__":
    NAME, PORT, ADVERTISE, REGISTRIES = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", PORT))
    listener.listen(128)
    threading.Thread(target=accept_loop, args=(listener,), daemon=True).start()
    heartbeat_loop(REGISTRIES.split(","))

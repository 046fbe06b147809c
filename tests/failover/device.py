#!/usr/bin/env python3
"""Legacy devices for tests/failover.rs, one asyncio task each.

    device.py NAME=HOST:PORT [NAME=HOST:PORT ...]

Each device connects (0.5 s timeout), sends `hello NAME#K` (K counts its connection
attempts), expects the echo within 1 s, then holds the connection and pings every
250 ms, expecting each echo within 1 s. On any loss it reconnects to the same
address every 100 ms, for at most 30 s. It reports on stdout as JSON lines:

    {"ev": "served", "dev", "conn": K}    an echoed hello on connection attempt K
    {"ev": "lost", "dev", "conn": K, "why"}
    {"ev": "gave_up", "dev"}
"""

import asyncio
import json
import sys

CONNECT_TIMEOUT = 0.5
ECHO_TIMEOUT = 1.0
PING_EVERY = 0.25
RETRY_EVERY = 0.1
GIVE_UP_AFTER = 30.0


def emit(**ev):
    print(json.dumps(ev), flush=True)


async def exchange(reader, writer, line):
    writer.write(line)
    await asyncio.wait_for(writer.drain(), ECHO_TIMEOUT)
    got = await asyncio.wait_for(reader.readline(), ECHO_TIMEOUT)
    if got != line:
        raise ConnectionError(f"echo {got!r}")


async def device(name, host, port):
    loop = asyncio.get_running_loop()
    attempt = 0
    while True:
        since = loop.time()
        while True:
            attempt += 1
            writer = None
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), CONNECT_TIMEOUT)
                await exchange(reader, writer, f"hello {name}#{attempt}\n".encode())
                break
            except (OSError, asyncio.TimeoutError, ConnectionError):
                if writer is not None:
                    writer.transport.abort()
                if loop.time() - since > GIVE_UP_AFTER:
                    emit(ev="gave_up", dev=name)
                    return
                await asyncio.sleep(RETRY_EVERY)
        emit(ev="served", dev=name, conn=attempt)
        try:
            while True:
                await asyncio.sleep(PING_EVERY)
                await exchange(reader, writer, b"ping\n")
        except (OSError, asyncio.TimeoutError, ConnectionError) as e:
            emit(ev="lost", dev=name, conn=attempt, why=type(e).__name__)
            writer.transport.abort()


async def main(specs):
    tasks = []
    for spec in specs:
        name, addr = spec.split("=", 1)
        host, port = addr.rsplit(":", 1)
        tasks.append(asyncio.create_task(device(name, host, int(port))))
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))

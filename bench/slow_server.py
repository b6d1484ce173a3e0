#!/usr/bin/env python3
"""W9's service (bench/run): answers every request after a delay.

    slow_server.py PORT DELAY_SECONDS

GET /stats says how many requests it answered and the most it held at once;
GET /reset starts counting again. One asyncio loop, keep-alive: the server
should cost the machine little next to what it measures."""
import asyncio
import json
import sys

DELAY = float(sys.argv[2])
state = {"in_flight": 0, "max_in_flight": 0, "answered": 0}


def response(body):
    data = json.dumps(body).encode()
    head = ("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode()
    return head + data


async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            if path == "/stats":
                body = dict(state)
            elif path == "/reset":
                state.update(max_in_flight=state["in_flight"], answered=0)
                body = dict(state)
            else:
                state["in_flight"] += 1
                state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
                await asyncio.sleep(DELAY)
                state["in_flight"] -= 1
                state["answered"] += 1
                body = {"ok": True}
            writer.write(response(body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    async with server:
        await server.serve_forever()


asyncio.run(main())

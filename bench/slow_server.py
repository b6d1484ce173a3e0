#!/usr/bin/env python3
"""W9's service (bench/run): answers every request after a delay.

    slow_server.py PORT DELAY_SECONDS

GET /stats says how many requests it answered and the most it held at once;
GET /reset starts counting again."""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DELAY = float(sys.argv[2])
lock = threading.Lock()
state = {"in_flight": 0, "max_in_flight": 0, "answered": 0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the fetcher's client pools connections

    def log_message(self, *args):
        pass

    def reply(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/stats":
            with lock:
                self.reply(dict(state))
            return
        if self.path == "/reset":
            with lock:
                state.update(max_in_flight=state["in_flight"], answered=0)
                self.reply(dict(state))
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        with lock:
            state["in_flight"] += 1
            state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
        time.sleep(DELAY)
        with lock:
            state["in_flight"] -= 1
            state["answered"] += 1
        self.reply({"ok": True})

    do_POST = do_GET


class Server(ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True


Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()

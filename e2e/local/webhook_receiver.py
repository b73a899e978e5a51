#!/usr/bin/env python3
"""A webhook endpoint for the local e2e suite: records every POST it gets.

Owns: one HTTP listener on 127.0.0.1 that appends each POST to a JSON-lines
file (path, herald's message-id and timestamp headers, whether the HMAC
signature checks out, the body) and answers a fixed status.
Leaves: deciding what a run should have received to the scenarios.
Invariant: a line is written and flushed before the answer goes out, so a
message herald counts as delivered over this webhook is already on disk.

Usage: webhook_receiver.py --out FILE [--port 0] [--status 200]
The HMAC key comes from the environment (E2E_WEBHOOK_KEY), never from the
command line. The first line on stdout is "listening on 127.0.0.1:PORT".
Python 3 standard library only.
"""

import argparse
import hashlib
import hmac
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Bodies above this are refused: herald's webhook documents are small.
MAX_BODY = 1024 * 1024


def signature_ok(key, timestamp, body, presented):
    """herald signs `timestamp + "." + body` with HMAC-SHA256, hex, `sha256=` prefix."""
    if not key or not presented:
        return None
    mac = hmac.new(key.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest("sha256=" + mac.hexdigest(), presented.strip())


def make_handler(out, lock, status, key):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0 or length > MAX_BODY:
                self.answer(413, b"too large")
                return
            body = self.rfile.read(length)
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            record = {
                "at_ms": int(time.time() * 1000),
                "path": self.path,
                "message_id": self.headers.get("X-Herald-Message-Id"),
                "timestamp": self.headers.get("X-Herald-Timestamp"),
                "signature_ok": signature_ok(
                    key,
                    self.headers.get("X-Herald-Timestamp") or "",
                    body,
                    self.headers.get("X-Herald-Signature"),
                ),
                "json": parsed,
                "raw": None if parsed is not None else body.decode("utf-8", "replace"),
            }
            with lock:
                out.write(json.dumps(record) + "\n")
                out.flush()
            self.answer(status, b'{"ok":true}')

        def do_GET(self):  # noqa: N802
            self.answer(200, b'{"ok":true}')

        def answer(self, code, payload):
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass  # one line per request would drown the suite's output

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="JSON-lines file to append to")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--status", type=int, default=200, help="status of every answer")
    args = parser.parse_args()

    key = os.environ.get("E2E_WEBHOOK_KEY", "")
    lock = threading.Lock()
    with open(args.out, "a", encoding="utf-8") as out:
        server = ThreadingHTTPServer(
            ("127.0.0.1", args.port), make_handler(out, lock, args.status, key)
        )
        server.daemon_threads = True
        print("listening on 127.0.0.1:%d" % server.server_address[1], flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

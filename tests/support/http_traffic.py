"""Real HTTP between two targets' network namespaces, for the http-* kinds' tests (local bed and kind bed).

A stdlib HTTP server entered into one namespace (``SERVER``: it answers every request with JSON saying what
reached it), a stdlib client (http.client) entered into another (``CLIENT``: each request's status, headers,
body or error, and time, as JSON). Host Python in the targets' network namespaces only, so the measurement
depends neither on the daemon's word nor on what a pod's image offers.
"""

from __future__ import annotations

import json
import os
import sys

from tests.support.network_bed import NetTarget, ScriptServer

PORT = 7400
PROGRAM = "pytest_chaos_daemon.programs.http_proxy"

SERVER = r'''
import http.server, json, sys, threading
ip, port = sys.argv[1], int(sys.argv[2])

class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("latin-1") if length else ""
        payload = json.dumps({"method": self.command, "target": self.path, "body": body,
                              "headers": [[k, v] for k, v in self.headers.items()]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = answer

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer((ip, port), Echo)
threading.Thread(target=lambda: (sys.stdin.read(), server.shutdown()), daemon=True).start()
print("ready", flush=True)
server.serve_forever()
'''

CLIENT = r'''
import http.client, json, sys, time
args = json.loads(sys.argv[1])
results, connection = [], None
for method, path, body, headers in args["requests"]:
    if connection is None or not args.get("keep_alive", True):
        connection = http.client.HTTPConnection(args["ip"], args["port"], timeout=args.get("timeout", 15))
    if args.get("held"):  # connected and used once; the next request when told (a line on stdin)
        print("ready", flush=True)
        sys.stdin.readline()
    start = time.monotonic()
    try:
        connection.request(method, path, body=body.encode() if body is not None else None, headers=headers)
        response = connection.getresponse()
        data = response.read()
        results.append({"status": response.status, "headers": response.getheaders(),
                        "body": data.decode("latin-1"), "seconds": time.monotonic() - start})
    except (OSError, http.client.HTTPException) as err:
        results.append({"error": type(err).__name__, "seconds": time.monotonic() - start})
        connection.close()
        connection = None
print(json.dumps(results))
'''


class Server(ScriptServer):
    """``SERVER`` serving HTTP on ``target``'s ``PORT`` until ``stop``."""

    def __init__(self, target: NetTarget) -> None:
        super().__init__(target, SERVER, target.ip, str(PORT))


def requests(client: NetTarget, server: NetTarget, *requests: tuple, **options: object) -> list[dict]:
    """Each request (method, path[, body[, headers]]) from ``client`` to the server, on one connection unless
    ``keep_alive=False``: status, headers, body (text) and seconds, or the error."""
    full = [[r[0], r[1], r[2] if len(r) > 2 else None, r[3] if len(r) > 3 else {}] for r in requests]
    result = client.run(sys.executable, "-I", "-c", CLIENT,
                        json.dumps({"ip": server.ip, "port": PORT, "requests": full, **options}), timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def echoed(result: dict) -> dict:
    assert result.get("status") == 200, result
    return json.loads(result["body"])


def proxies_in(target: NetTarget) -> list[int]:
    """PIDs of HTTP proxies running in ``target``'s network namespace."""
    inode = os.stat(target.netns_path).st_ino
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            # The interpreter itself (the confine helper that starts it names the program too).
            if b"python" in os.path.basename(argv[0]) and argv[1:3] == [b"-m", PROGRAM.encode()] \
                    and os.stat(f"/proc/{pid}/ns/net").st_ino == inode:
                found.append(int(pid))
        except OSError:
            continue
    return found

"""The daemon's two in-namespace programs (packet queue, DNS responder) run by hand on a network bed target,
and the floods that measure them from outside: their memory from /proc, what they did from their counters.

A program is started as the daemon starts it, inside the target's network namespace only (``nsenter
--net``, which execs it: the Popen's pid is the program's). Flood tools are stdlib scripts run the same
way, each printing one JSON line of what it did.
"""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
from typing import Any

from tests.support.network_bed import NetTarget

READY_TIMEOUT_S = 15.0


def start_program(target: NetTarget, module: str, *args: str) -> subprocess.Popen[str]:
    """``python3 -m pytest_chaos_daemon.programs.<module> args`` in ``target``'s network namespace, once it says ready."""
    process = subprocess.Popen(["nsenter", f"--net={target.netns_path}", sys.executable, "-m",
                                f"pytest_chaos_daemon.programs.{module}", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], READY_TIMEOUT_S)
    line = process.stdout.readline().strip() if ready else ""
    if line != "ready":
        process.kill()
        _, err = process.communicate(timeout=10)
        raise RuntimeError(f"{module} did not start in {target.name}: {line!r} {err.strip()}")
    return process


def stop_program(process: subprocess.Popen[str]) -> tuple[dict[str, Any], str]:
    """SIGTERM, then its counters (the last stdout line) and its stderr; it must exit 0."""
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    if process.returncode != 0:
        raise RuntimeError(f"exited {process.returncode}: {err.strip()[-2000:]}")
    return json.loads(out.strip().splitlines()[-1]), err


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak since it started), in KiB, as the kernel counts them."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if line.startswith(("VmRSS", "VmHWM")))
    return {key: int(value.split()[0]) for key, value in fields.items()}


def tool(target: NetTarget, script: str, *args: Any, timeout: float = 120) -> dict[str, Any]:
    """Run one of the scripts below in ``target``'s namespace; its JSON report."""
    result = target.run(sys.executable, "-c", script, *(json.dumps(a) for a in args), timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"tool in {target.name} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def background(target: NetTarget, script: str, *args: Any) -> subprocess.Popen[str]:
    """A script that serves until its stdin closes, once it says ready."""
    process = subprocess.Popen(["nsenter", f"--net={target.netns_path}", sys.executable, "-c", script,
                                *(json.dumps(a) for a in args)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], READY_TIMEOUT_S)
    if not ready or process.stdout.readline().strip() != "ready":
        process.kill()
        raise RuntimeError(f"script in {target.name} did not start: {process.communicate(timeout=10)[1]}")
    return process


def finish(process: subprocess.Popen[str]) -> dict[str, Any]:
    """Close a background script's stdin; its JSON report."""
    out, err = process.communicate(input="", timeout=60)
    if process.returncode != 0:
        raise RuntimeError(f"script failed ({process.returncode}): {err.strip()[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


# Sends each packet (hex) as it is through a raw socket (IPPROTO_RAW: IP_HDRINCL), as a target with
# CAP_NET_RAW can. Reports how many the kernel took.
RAW_SEND = r'''
import json, socket, sys
packets, destination = json.loads(sys.argv[1]), json.loads(sys.argv[2])
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
sent, errors = 0, []
for packet in packets:
    try:
        sock.sendto(bytes.fromhex(packet), (destination, 0))
        sent += 1
    except OSError as error:
        errors.append(str(error))
print(json.dumps({"sent": sent, "errors": errors}))
'''

# Writes DNS queries (for NAME, type A), pipelined on one TCP connection, until BYTES are written or SECONDS
# have passed (a responder that stops reading holds the writer up); replies are read and counted as they come.
DNS_TCP_FLOOD = r'''
import json, select, socket, struct, sys, time
port, name, total, seconds = (json.loads(a) for a in sys.argv[1:5])
labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
def query(i):
    message = struct.pack("!6H", i & 0xFFFF, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", 1, 1)
    return struct.pack("!H", len(message)) + message
sock = socket.create_connection(("127.0.0.1", port), timeout=5)
sock.setblocking(False)
stream = b"".join(query(i) for i in range(total // len(query(0)) + 1))[:total]
sent, received, closed = 0, 0, False
end = time.monotonic() + seconds
while sent < total and time.monotonic() < end and not closed:
    readable, writable, _ = select.select([sock], [sock], [], max(0.0, end - time.monotonic()))
    if readable:
        try:
            data = sock.recv(1 << 16)
            received += len(data)
            closed = not data
        except OSError:
            closed = True
    if writable and not closed:
        try:
            sent += sock.send(stream[sent:sent + (1 << 16)])
        except BlockingIOError:
            pass
        except OSError:
            closed = True
sock.close()
print(json.dumps({"sent": sent, "received": received, "closed_by_responder": closed}))
'''

# Opens CONNECTIONS connections to the responder and on each writes queries as DNS_TCP_FLOOD does, all at once,
# for SECONDS; never reads. Reports what was written and how many connections the responder closed.
DNS_TCP_CONNECTIONS = r'''
import json, selectors, socket, struct, sys, time
port, name, connections, seconds = (json.loads(a) for a in sys.argv[1:5])
labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
message = struct.pack("!6H", 1, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", 1, 1)
chunk = (struct.pack("!H", len(message)) + message) * 512
selector = selectors.DefaultSelector()
for _ in range(connections):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setblocking(False)
    selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
sent, closed = 0, 0
end = time.monotonic() + seconds
while time.monotonic() < end and selector.get_map():
    for key, events in selector.select(max(0.0, end - time.monotonic())):
        sock = key.fileobj
        try:
            if events & selectors.EVENT_READ and not sock.recv(1 << 16):
                raise ConnectionResetError
            if events & selectors.EVENT_WRITE:
                sent += sock.send(chunk)
        except BlockingIOError:
            pass
        except OSError:
            selector.unregister(sock)
            sock.close()
            closed += 1
for key in list(selector.get_map().values()):
    key.fileobj.close()
print(json.dumps({"sent": sent, "closed_by_responder": closed}))
'''

# A DNS upstream on ADDRESS:53 that never answers: UDP queries are read and ignored, TCP connections accepted
# and read until the other side closes. Reports the queries it got and the most TCP connections open at once.
SILENT_UPSTREAM = r'''
import json, selectors, socket, sys
address = json.loads(sys.argv[1])
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind((address, 53))
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind((address, 53))
tcp.listen(4096)
selector = selectors.DefaultSelector()  # epoll: more descriptors than select() takes
for source in (sys.stdin, udp, tcp):
    selector.register(source, selectors.EVENT_READ)
print("ready", flush=True)
connections, most, udp_queries, accepted, done = set(), 0, 0, 0, False
while not done:
    for key, _ in selector.select():
        if key.fileobj is sys.stdin:
            done = True
        elif key.fileobj is udp:
            udp.recv(65535)
            udp_queries += 1
        elif key.fileobj is tcp:
            connection, _ = tcp.accept()
            selector.register(connection, selectors.EVENT_READ)
            connections.add(connection)
            accepted += 1
            most = max(most, len(connections))
        else:
            connection = key.fileobj
            try:
                data = connection.recv(65535)
            except OSError:
                data = b""
            if not data:
                selector.unregister(connection)
                connections.discard(connection)
                connection.close()
print(json.dumps({"udp_queries": udp_queries, "tcp_connections": accepted, "most_at_once": most}))
'''

# A DNS upstream on ADDRESS:53 (TCP) answering any query with a zone transfer that never ends: messages of
# 16 KiB as fast as the other side reads, up to LIMIT bytes a connection. Reports the bytes it got out.
ENDLESS_TRANSFER = r'''
import json, select, socket, struct, sys, threading
address, limit = json.loads(sys.argv[1]), json.loads(sys.argv[2])
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind((address, 53))
tcp.listen(16)
sent = []  # bytes written so far, one entry a connection
def serve(connection):
    sent.append(0)
    index, total = len(sent) - 1, 0
    try:
        prefix = connection.recv(2)
        query = b""
        while len(query) < struct.unpack("!H", prefix)[0]:
            query += connection.recv(65535)
        # The query's id and question, then one record's worth of filler: a message of 16 KiB.
        end = 12 + query[12:].index(b"\0") + 5
        body = struct.pack("!6H", struct.unpack_from("!H", query)[0], 0x8400, 1, 0, 0, 0) + query[12:end]
        message = body + bytes(16384 - len(body))
        framed = struct.pack("!H", len(message)) + message
        while total < limit:
            connection.sendall(framed)
            total += len(framed)
            sent[index] = total
    except OSError:
        pass
    finally:
        connection.close()
def accept():
    while True:
        connection, _ = tcp.accept()
        threading.Thread(target=serve, args=(connection,), daemon=True).start()
threading.Thread(target=accept, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
print(json.dumps({"sent": sent}))
'''

# Asks the responder for a zone transfer over TCP and never reads the answer; stays SECONDS, then reports
# whether the responder closed (or reset) the connection meanwhile.
UNREAD_TRANSFER = r'''
import json, socket, struct, sys, time
port, name, seconds = (json.loads(a) for a in sys.argv[1:4])
labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
message = struct.pack("!6H", 7, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", 252, 1)
sock = socket.create_connection(("127.0.0.1", port), timeout=5)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # read nothing, and take little
sock.sendall(struct.pack("!H", len(message)) + message)
time.sleep(seconds)
sock.setblocking(False)
read, closed = 0, False
try:
    while chunk := sock.recv(1 << 20):
        read += len(chunk)
    closed = True  # the end of the stream
except BlockingIOError:
    pass  # still open
except ConnectionResetError:
    closed = True
print(json.dumps({"closed_by_responder": closed, "readable_bytes": read}))
'''

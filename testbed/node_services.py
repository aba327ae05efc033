#!/usr/bin/env python3
"""Services of the simulated Sentinel node, run inside <prefix>-node by testbed.sh.

One process, standard library only:
  * HTTP on 0.0.0.0:<http-port>: any GET/HEAD gets 200 and a small JSON body
        {"served_by": <local address the request arrived on>,
         "client": <peer address>, "path": <request path>}
    so a test can tell which address (10.8.0.1, 198.18.0.10, ...) it reached and
    which tunnel address it came from.
  * DNS on UDP <dns-addr>:<dns-port>: answers A queries for <name> with <answer>
    (authoritative), NOERROR/no data for other types of <name>, NXDOMAIN for any other
    name, FORMERR for malformed queries and NOTIMP for opcodes other than QUERY.

Both sockets are bound before anything is served, so once HTTP answers, DNS is bound too.
Logs go to stderr (testbed.sh points it at a file in the state dir).
"""

import argparse
import json
import signal
import socket
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


# ----------------------------------------------------------------------------- HTTP

class Handler(BaseHTTPRequestHandler):
    server_version = "blue-wg-testbed/1"
    protocol_version = "HTTP/1.0"  # one request per connection: simplest for test clients

    def _body(self):
        return (json.dumps({
            "served_by": self.connection.getsockname()[0],
            "client": self.client_address[0],
            "path": self.path,
        }) + "\n").encode()

    def _reply(self, send_body):
        body = self._body()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/bytes/"):
            return self._bytes()
        if self.path.startswith("/headers"):
            return self._headers()
        self._reply(True)

    def _headers(self):
        """GET /headers...: the request's path and headers as JSON, offered keep-alive (what
        a proxy in between passed on, and whether it let a connection be reused)."""
        body = (json.dumps({
            "client": self.client_address[0],
            "path": self.path,
            "headers": {k: v for k, v in self.headers.items()},
        }) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "keep-alive")
        self.end_headers()
        self.wfile.write(body)

    def _bytes(self):
        """GET /bytes/N: N bytes (at most 64 MiB), for counters that must grow by a download."""
        try:
            n = max(0, min(int(self.path[len("/bytes/"):]), 64 << 20))
        except ValueError:
            n = 0
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(n))
        self.end_headers()
        chunk = b"x" * 65536
        while n > 0:
            self.wfile.write(chunk[:n])
            n -= min(n, len(chunk))

    def do_HEAD(self):
        self._reply(False)

    def log_message(self, fmt, *args):
        log("http %s -> %s %s" % (self.client_address[0],
                                  self.connection.getsockname()[0], fmt % args))


class KeepAliveHandler(Handler):
    """HTTP/1.1 with keep-alive (port 8080): one connection carries many requests, so a
    test can tell whether a change to the tunnel dropped open connections."""
    protocol_version = "HTTP/1.1"

    def _reply(self, send_body):
        body = self._body()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)


class HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


# ----------------------------------------------------------------------------- DNS

QTYPE_A, QTYPE_ANY, QCLASS_IN = 1, 255, 1
RCODE_OK, RCODE_FORMERR, RCODE_NXDOMAIN, RCODE_NOTIMP = 0, 1, 3, 4


def parse_question(msg):
    """Return (labels, qtype, qclass, end_offset) of the first question; raise ValueError."""
    off, labels = 12, []
    while True:
        if off >= len(msg):
            raise ValueError("truncated name")
        n = msg[off]
        off += 1
        if n == 0:
            break
        if n & 0xC0:  # no compression pointers in a question we accept
            raise ValueError("compressed/extended label in question")
        if off + n > len(msg):
            raise ValueError("truncated label")
        labels.append(msg[off:off + n])
        off += n
    if off + 4 > len(msg):
        raise ValueError("truncated question")
    qtype, qclass = struct.unpack("!HH", msg[off:off + 4])
    return labels, qtype, qclass, off + 4


def dns_answer(query, name, answer_ip):
    """Build the response bytes for one query, or None to drop it silently."""
    if len(query) < 12:
        return None  # not even a header: nothing to answer to
    qid, flags, qdcount = struct.unpack("!HHH", query[:6])
    if flags & 0x8000:
        return None  # a response, not a query
    opcode = (flags >> 11) & 0xF
    rd = flags & 0x0100
    # QR=1, same opcode, AA=1, RD copied, RA=0 (we do not recurse)
    rflags = 0x8000 | (opcode << 11) | 0x0400 | rd

    def reply(rcode, question=b"", answers=b"", qd=0, an=0):
        return struct.pack("!HHHHHH", qid, rflags | rcode, qd, an, 0, 0) + question + answers

    if opcode != 0:
        return reply(RCODE_NOTIMP)
    if qdcount != 1:
        return reply(RCODE_FORMERR)
    try:
        labels, qtype, qclass, end = parse_question(query)
    except ValueError:
        return reply(RCODE_FORMERR)
    question = query[12:end]
    qname = b".".join(labels).decode("ascii", "replace").lower().rstrip(".")
    if qname != name or qclass not in (QCLASS_IN, QTYPE_ANY):
        return reply(RCODE_NXDOMAIN, question, qd=1)
    if qtype not in (QTYPE_A, QTYPE_ANY):
        return reply(RCODE_OK, question, qd=1)  # the name exists, no data of that type
    rr = struct.pack("!HHHIH", 0xC00C, QTYPE_A, QCLASS_IN, 60, 4) + socket.inet_aton(answer_ip)
    return reply(RCODE_OK, question, rr, qd=1, an=1)


def serve_dns(sock, name, answer_ip):
    while True:
        try:
            query, peer = sock.recvfrom(4096)
        except OSError as e:
            log("dns recv error: %s" % e)
            continue
        try:
            resp = dns_answer(query, name, answer_ip)
        except Exception as e:  # never let a bad packet kill the responder
            log("dns error from %s: %r" % (peer[0], e))
            continue
        if resp is not None:
            rcode = resp[3] & 0xF
            log("dns %s rcode=%d len=%d" % (peer[0], rcode, len(query)))
            try:
                sock.sendto(resp, peer)
            except OSError as e:
                log("dns send error: %s" % e)


# ----------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--http-addr", default="0.0.0.0")
    ap.add_argument("--http-port", type=int, default=80)
    ap.add_argument("--keepalive-port", type=int, default=8080)
    ap.add_argument("--dns-addr", default="10.8.0.1")
    ap.add_argument("--dns-port", type=int, default=53)
    ap.add_argument("--dns-name", default="test.sentinel.internal")
    ap.add_argument("--dns-answer", default="198.18.0.10")
    args = ap.parse_args()

    # SIGTERM -> normal exit (sockets closed by the OS either way).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    dns_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns_sock.bind((args.dns_addr, args.dns_port))
    httpd = HTTPServer((args.http_addr, args.http_port), Handler)
    keepalive = HTTPServer((args.http_addr, args.keepalive_port), KeepAliveHandler)
    threading.Thread(target=keepalive.serve_forever, daemon=True).start()

    threading.Thread(target=serve_dns,
                     args=(dns_sock, args.dns_name.lower().rstrip("."), args.dns_answer),
                     daemon=True).start()
    log("serving http on %s:%d, dns on %s:%d (%s -> %s)" % (
        args.http_addr, args.http_port, args.dns_addr, args.dns_port,
        args.dns_name, args.dns_answer))
    httpd.serve_forever()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Tiny probes for the testbed, meant to run inside a namespace (standard library only).

  probe.py http URL [TIMEOUT]            GET URL; prints the response body; exit 0 on HTTP 200
  probe.py dns SERVER NAME [TYPE] [TIMEOUT]
                                         one UDP query (TYPE: A (default), AAAA, ANY);
                                         prints {"rcode": n, "answers": ["1.2.3.4", ...]}
Exit status 1 with a message on stderr when the probe fails (timeout, refused, no route...).
"""

import json
import os
import socket
import struct
import sys
import urllib.request

QTYPES = {"A": 1, "AAAA": 28, "ANY": 255}


def http(url, timeout=5.0):
    # no proxies: the environment of the caller must not redirect a namespace probe
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as r:
        body = r.read().decode()
        sys.stdout.write(body if body.endswith("\n") else body + "\n")
        return 0 if r.status == 200 else 1


def skip_name(msg, off):
    while True:
        n = msg[off]
        if n == 0:
            return off + 1
        if n & 0xC0 == 0xC0:
            return off + 2
        off += 1 + n


def dns(server, name, qtype="A", timeout=3.0):
    qid = int.from_bytes(os.urandom(2), "big")
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)  # RD=1, one question
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack("!HH", QTYPES[qtype.upper()], 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    s.sendto(q, (server, 53))
    while True:
        msg, _ = s.recvfrom(4096)
        rid, flags, qd, an = struct.unpack("!HHHH", msg[:8])
        if rid == qid and flags & 0x8000:
            break
    off = 12
    for _ in range(qd):
        off = skip_name(msg, off) + 4
    answers = []
    for _ in range(an):
        off = skip_name(msg, off)
        rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", msg[off:off + 10])
        off += 10
        rdata = msg[off:off + rdlen]
        off += rdlen
        if rtype == 1 and rdlen == 4:
            answers.append(socket.inet_ntoa(rdata))
        elif rtype == 28 and rdlen == 16:
            answers.append(socket.inet_ntop(socket.AF_INET6, rdata))
    print(json.dumps({"rcode": flags & 0xF, "aa": bool(flags & 0x0400), "answers": answers}))
    return 0


def main(argv):
    try:
        if len(argv) >= 2 and argv[0] == "http":
            return http(argv[1], *map(float, argv[2:3]))
        if len(argv) >= 3 and argv[0] == "dns":
            return dns(argv[1], argv[2], *argv[3:4], *map(float, argv[4:5]))
    except Exception as e:  # a probe reports, it does not trace back
        sys.stderr.write("probe failed: %s: %s\n" % (type(e).__name__, e))
        return 1
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

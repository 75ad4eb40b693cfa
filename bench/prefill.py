#!/usr/bin/env python3
"""Writes k0 .. k<keys-1> once each (100-byte values) through mmapd's /set or etcd's
/v2/keys, over `connections` keep-alive connections; exits 1 if any write failed.
(wrk cannot stop after N requests: it always runs its full duration.)

Usage: prefill.py mmapd|etcd PORT [KEYS] [CONNECTIONS]
"""

import http.client
import sys
import threading

system, port = sys.argv[1], int(sys.argv[2])
keys = int(sys.argv[3]) if len(sys.argv) > 3 else 10_000
connections = int(sys.argv[4]) if len(sys.argv) > 4 else 32
body = "value=" + "v" * 100
headers = {"Content-Type": "application/x-www-form-urlencoded"}
failures = []


def worker(first):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for n in range(first, keys, connections):
        method, path = ("PUT", f"/v2/keys/k{n}") if system == "etcd" else ("POST", f"/set/k{n}")
        connection.request(method, path, body, headers)
        response = connection.getresponse()
        response.read()
        if response.status // 100 != 2:
            failures.append((n, response.status))


threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
if failures:
    sys.exit(f"{system}: {len(failures)} prefill writes failed, e.g. {failures[:3]}")
print(f"{system}: {keys} keys written", file=sys.stderr)

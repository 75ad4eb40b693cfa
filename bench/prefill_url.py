#!/usr/bin/env python3
"""prefill.py for bench/run's transaction and TLS sections: writes k0 .. k<keys-1> once
each (100-byte values) to a base URL, http or https, over `connections` keep-alive
connections; exits 1 if any write failed.

  mmapd  POST /set/<key>, form value=
  etcd   PUT /v2/keys/<key>, form value= (etcd's v2 keyspace, what the main workloads use)
  etcd3  POST /v3/kv/put, keys and values base64 (etcd's v3 keyspace, which is not the
         v2 one: what the transaction workload compares and writes)

Usage: prefill_url.py mmapd|etcd|etcd3 URL [KEYS] [CONNECTIONS] [CA_FILE]
"""

import base64
import http.client
import json
import ssl
import sys
import threading
import urllib.parse

system, url = sys.argv[1], urllib.parse.urlsplit(sys.argv[2])
keys = int(sys.argv[3]) if len(sys.argv) > 3 else 10_000
connections = int(sys.argv[4]) if len(sys.argv) > 4 else 32
ca_file = sys.argv[5] if len(sys.argv) > 5 else None
value = "v" * 100
form = {"Content-Type": "application/x-www-form-urlencoded"}
failures = []


def connect():
    if url.scheme == "https":
        context = ssl.create_default_context(cafile=ca_file)
        return http.client.HTTPSConnection(url.hostname, url.port, timeout=30, context=context)
    return http.client.HTTPConnection(url.hostname, url.port, timeout=30)


def request(n):
    key = f"k{n}"
    if system == "mmapd":
        return "POST", f"/set/{key}", "value=" + value, form
    if system == "etcd":
        return "PUT", f"/v2/keys/{key}", "value=" + value, form
    b64 = lambda text: base64.b64encode(text.encode()).decode()
    body = json.dumps({"key": b64(key), "value": b64(value)})
    return "POST", "/v3/kv/put", body, {"Content-Type": "application/json"}


def worker(first):
    connection = connect()
    for n in range(first, keys, connections):
        connection.request(*request(n))
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
    sys.exit(f"{system} {sys.argv[2]}: {len(failures)} prefill writes failed, e.g. {failures[:3]}")
print(f"{system} {sys.argv[2]}: {keys} keys written", file=sys.stderr)

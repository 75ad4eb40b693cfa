"""The same script through the `etcd3` client from PyPI (python-etcd3, gRPC), against
mmapd or etcd: one line per step, what a user of the library sees, with ids and
revisions left out (they differ between the two). tests/etcd_python.rs runs it
against both and compares the lines."""
import sys

import etcd3

port = int(sys.argv[1])
client = etcd3.client(host="127.0.0.1", port=port, timeout=10)


def say(*parts):
    print(*parts, flush=True)


client.put("py/a", "1")
client.put("py/b", "2")
value, meta = client.get("py/a")
say("get", value, meta.key, meta.version)
say("missing", client.get("py/none"))
say("prefix", sorted((m.key, v) for v, m in client.get_prefix("py/")))
say("range", sorted((m.key, v) for v, m in client.get_range("py/a", "py/b")))
succeeded, responses = client.transaction(
    compare=[client.transactions.value("py/a") == "1"],
    success=[client.transactions.put("py/a", "3"), client.transactions.get("py/b")],
    failure=[],
)
say("txn", succeeded, [[(m.key, v) for v, m in r] for r in responses if isinstance(r, list)])
succeeded, _ = client.transaction(
    compare=[client.transactions.version("py/a") < 1], success=[], failure=[client.transactions.delete("py/b")]
)
say("txn failed", succeeded, client.get("py/b"))
say("delete", client.delete("py/a"), client.delete("py/a"))
client.put("py/c", "x")
say("delete prefix", client.delete_prefix("py/").deleted)
lease = client.lease(60)
client.put("py/leased", "v", lease=lease)
say("lease", lease.granted_ttl, sorted(lease.keys))
say("lease refreshed", [r.TTL for r in client.refresh_lease(lease.id)])
lease.revoke()
say("lease revoked", client.get("py/leased"), lease.remaining_ttl)
say("status", client.status().version[:3])
events, cancel = client.watch_prefix("py/w/")
client.put("py/w/1", "a")
client.delete("py/w/1")
seen = []
for event in events:
    seen.append((type(event).__name__, event.key, event.value))
    if len(seen) == 2:
        break
cancel()
say("watch", seen)

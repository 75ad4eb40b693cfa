#!/usr/bin/env bash
# A distributed lock (and a leader election) over mmapd's /v1 API with curl alone, as
# etcd's concurrency package builds them: a lease, a create-only transaction, a watch.
# docs/recipes.md explains each step; tests/recipes.rs runs this script.
#
#   examples/lock.sh URL NAME COMMAND [ARGS...]
#
# Takes the lock NAME (the key locks/NAME) on the cluster at URL, waiting while another
# holder has it, then runs COMMAND with MMAPD_FENCING_TOKEN set to the lock key's
# create_revision: it grows with every new holder, so a resource the holder writes to can
# refuse a write with a token lower than one it has seen (a holder that was paused past
# its lease and lost the lock without knowing). The lock is released when COMMAND ends,
# or, if this script dies, when its lease expires (LOCK_TTL_S, 10 s by default).
#
# A leader election is the same lock: the holder is the leader while COMMAND runs, the
# key's value names it (LOCK_VALUE), and anyone can follow the leadership with
#   curl -N "$URL/v1/watch?key=locks/NAME"
set -euo pipefail

url=${1:?usage: lock.sh URL NAME COMMAND [ARGS...]}
name=${2:?usage: lock.sh URL NAME COMMAND [ARGS...]}
shift 2
[ $# -gt 0 ] || { echo "lock.sh: no command to run" >&2; exit 2; }
key="locks/$name"
ttl=${LOCK_TTL_S:-10}
value=${LOCK_VALUE:-$(hostname)-$$}

# 1. A lease: the lock lives as long as we keep it alive.
lease=$(curl -sf -XPOST "$url/v1/leases" -d "{\"ttl_s\":$ttl}" | sed -n 's/.*"id":"\([0-9a-f]\{16\}\)".*/\1/p')
[ -n "$lease" ] || { echo "lock.sh: no lease granted" >&2; exit 1; }
keepalive_every=$(( ttl / 3 > 0 ? ttl / 3 : 1 ))
( while sleep "$keepalive_every"; do
      curl -sf -XPOST "$url/v1/leases/$lease/keepalive" >/dev/null || exit 0
  done ) &
keeper=$!
release() {
    kill "$keeper" 2>/dev/null || true
    # Revoking the lease deletes the lock key: the next waiter's watch sees the delete.
    curl -s -XDELETE "$url/v1/leases/$lease" >/dev/null || true
}
trap release EXIT

# 2. Create the key only if it does not exist (create_revision 0), attached to the lease;
#    else read who holds it, and at which revision.
txn="{\"compare\":[{\"key\":\"$key\",\"target\":\"create_revision\",\"op\":\"==\",\"value\":0}],
      \"success\":[{\"op\":\"put\",\"key\":\"$key\",\"value\":\"$value\",\"lease\":\"$lease\"}],
      \"failure\":[{\"op\":\"get\",\"key\":\"$key\"}]}"
while :; do
    answer=$(curl -sf -XPOST "$url/v1/txn" -d "$txn")
    if [[ $answer == *'"succeeded":true'* ]]; then
        # The put's revision is the key's create_revision: the fencing token.
        token=$(sed -n 's/.*"revision":\([0-9]*\).*/\1/p' <<<"$answer")
        break
    fi
    # 3. Held: wait for the key's delete (a release, or its holder's lease expiring),
    #    watching from just after the revision we saw it at, so a delete that happened
    #    meanwhile is replayed, never missed. Then try again.
    seen=$(sed -n 's/.*"mod_revision":\([0-9]*\).*/\1/p' <<<"$answer")
    if [ -n "$seen" ]; then
        curl -sfN "$url/v1/watch?key=$key&from=$((seen + 1))" | grep -m1 -q '"type":"delete"' || true
    fi
done

# 4. Hold it while the command runs.
MMAPD_FENCING_TOKEN=$token "$@"

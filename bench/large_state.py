#!/usr/bin/env python3
"""A large state on a 3-node cluster (the performance issue's 10M keys): resident memory
against the raw bytes, restart to ready, and a follower catching up from a snapshot
larger than the old 1 GiB peer body limit, sent in chunks and resumed after a cut.

Starts a cluster of MMAPD (default target/release/mmapd) in a temporary directory, with
the default snapshot settings, imports KEYS keys of 100-byte values (`key%010d`) through
`mmapd-admin import`, then:
1. memory: VmRSS of every node once each has applied the import;
2. snapshot: an admin snapshot on every node (the time of each);
3. restart: one follower stopped with SIGTERM and started again: seconds from the
   process start to `/health` 200 (ready), and its VmRSS then;
4. catch-up: that follower killed, one more write and an admin snapshot on the leader
   (its log no longer holds what the follower lacks), the follower started again: it
   gets the leader's snapshot in chunks; with CUT=1 (the default) it is stopped
   (SIGSTOP) for STOP_S (12) s once a quarter has arrived, so the transfer is cut and resumes.
   Seconds from the start to serving the last write, bytes received in chunks, the
   transfers resumed, and its VmRSS.

Usage: bench/large_state.py [KEYS]          (default 10,000,000)
Env: MMAPD, MMAPD_ADMIN (binaries), BENCH_BASE_PORT (25000), BENCH_KEEP=1 (keep the dir),
CUT=0 (no cut), STOP_S, CHUNK (--snapshot-chunk-bytes, default the daemon's).
See BENCHMARKS.md, "A large state: 10M keys".
"""

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MMAPD = os.environ.get("MMAPD", os.path.join(ROOT, "target/release/mmapd"))
ADMIN = os.environ.get("MMAPD_ADMIN", os.path.join(ROOT, "target/release/mmapd-admin"))
KEYS = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
BASE = int(os.environ.get("BENCH_BASE_PORT", "25000"))
PORTS = [BASE + 1, BASE + 2, BASE + 3]
CUT = os.environ.get("CUT", "1") != "0"
CHUNK = os.environ.get("CHUNK")
# Longer than a chunk's timeout (the peer timeout, 2 s by default, plus 8 MiB at 1 MiB/s).
STOP_S = float(os.environ.get("STOP_S", "12"))
VALUE = 100
RAW = KEYS * (len("key0000000000") + VALUE)


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def get(port, path, timeout=5):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    except OSError:
        return None, b""
    finally:
        connection.close()


def status(port):
    code, body = get(port, "/status")
    return json.loads(body) if code == 200 else None


def leader():
    for port in PORTS:
        s = status(port)
        if s and s.get("state") == "leader":
            return port
    return None


def metric(port, name):
    code, body = get(port, "/metrics")
    if code != 200:
        return None
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def admin(port, *args, timeout=1800):
    socket = os.path.join(WORK, f"admin-{port}.sock")
    done = subprocess.run([ADMIN, "--socket", socket, "--timeout", str(timeout), *args],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"mmapd-admin {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def start(port):
    peers = ",".join(f"127.0.0.1:{p}" for p in PORTS)
    args = [MMAPD, "--port", str(port), "--peers", peers, "--data-dir", os.path.join(WORK, f"d{port}"),
            "--admin-socket", os.path.join(WORK, f"admin-{port}.sock"),
            "--quota-bytes", str(16 << 30)]
    if CHUNK:
        args += ["--snapshot-chunk-bytes", CHUNK]
    return subprocess.Popen(args, stdout=open(os.path.join(WORK, f"mmapd-{port}.log"), "a"),
                            stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "info"})


def wait(what, check, timeout, every=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise SystemExit(f"timed out waiting for {what}; logs in {WORK}")


def put(port, key, value):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request("PUT", f"/v1/kv/{key}", value)
    response = connection.getresponse()
    response.read()
    return response.status


def serves(port, key):
    code, _ = get(port, f"/v1/kv/{key}?consistency=stale")
    return code == 200


def mb(n):
    return f"{n / 1e6:,.0f} MB"


PROCS = {}


def main():
    procs = PROCS
    procs.update({port: start(port) for port in PORTS})
    lead = wait("a leader", leader, 60, 0.5)
    log(f"leader :{lead}; importing {KEYS:,} keys")
    # In files of 1M keys (an import takes at most 1 GiB), each sent to the leader of the
    # moment and sent again if it fails (an import is idempotent).
    imported = 0.0
    for first in range(0, KEYS, 1_000_000):
        db = os.path.join(WORK, "db.json")
        with open(db, "w") as out:
            out.write("{")
            for block in range(first, min(KEYS, first + 1_000_000), 100_000):
                if block > first:
                    out.write(",")
                last = min(KEYS, first + 1_000_000, block + 100_000)
                out.write(",".join(f'"key{n:010}":"{"v" * VALUE}"' for n in range(block, last)))
            out.write("}")
        started = time.monotonic()
        for attempt in range(5):
            lead = wait("a leader", leader, 60, 0.2)
            try:
                admin(lead, "import", db)
                break
            except SystemExit as error:
                log(f"import of keys from {first:,} on :{lead} failed ({error}); again")
        else:
            raise SystemExit(f"the import failed 5 times; logs in {WORK}")
        imported += time.monotonic() - started
        os.remove(db)
    lead = wait("a leader", leader, 60, 0.2)
    commit = status(lead)["commit_index"]
    wait("every node to apply the import", lambda: all(
        (status(p) or {}).get("last_applied", 0) >= commit for p in PORTS), 1800, 0.5)
    log(f"imported in {imported:.1f} s; applied everywhere")
    time.sleep(2)
    rss = {port: rss_bytes(procs[port].pid) for port in PORTS}
    log("RSS after import: " + ", ".join(f":{p} {mb(r)} ({r / RAW:.2f}x raw)" for p, r in rss.items()))

    snapshot_s = {}
    for port in PORTS:
        started = time.monotonic()
        admin(port, "snapshot")
        snapshot_s[port] = time.monotonic() - started
    log("admin snapshot: " + ", ".join(f":{p} {s:.1f} s" for p, s in snapshot_s.items()))
    snap_files = [f for f in os.listdir(os.path.join(WORK, f"d{lead}")) if f.endswith(".snap")]
    snap_bytes = os.path.getsize(os.path.join(WORK, f"d{lead}", snap_files[0]))
    log(f"snapshot file {mb(snap_bytes)} ({snap_bytes / (1 << 30):.2f} GiB)")

    follower = next(p for p in PORTS if p != lead)
    procs[follower].send_signal(signal.SIGTERM)
    procs[follower].wait(120)
    started = time.monotonic()
    procs[follower] = start(follower)
    wait("the restarted follower to be ready", lambda: get(follower, "/health")[0] == 200, 600, 0.01)
    ready_s = time.monotonic() - started
    wait("the restarted follower to serve", lambda: serves(follower, f"key{KEYS - 1:010}"), 600, 0.05)
    time.sleep(1)
    restart_rss = rss_bytes(procs[follower].pid)
    log(f"restart to ready {ready_s:.2f} s ({ready_s / (KEYS / 1e6):.2f} s per 1M keys); "
        f"RSS {mb(restart_rss)} ({restart_rss / RAW:.2f}x raw)")

    procs[follower].kill()
    procs[follower].wait()
    assert put(lead, "after-the-snapshot", "x") // 100 == 2
    started = time.monotonic()
    admin(lead, "snapshot")
    log(f"leader snapshot past the follower in {time.monotonic() - started:.1f} s")
    started = time.monotonic()
    procs[follower] = start(follower)
    cut_at = None
    if CUT:
        wait("a quarter of the snapshot to arrive", lambda: (metric(
            follower, "mmapd_snapshot_chunk_bytes_received_total") or 0) >= snap_bytes / 4, 600, 0.01)
        cut_at = time.monotonic() - started
        procs[follower].send_signal(signal.SIGSTOP)
        time.sleep(STOP_S)
        procs[follower].send_signal(signal.SIGCONT)
    wait("the follower to serve the write after the snapshot",
         lambda: serves(follower, "after-the-snapshot"), 1800, 0.05)
    caught_s = time.monotonic() - started
    received = metric(follower, "mmapd_snapshot_chunk_bytes_received_total") or 0
    chunks = metric(follower, "mmapd_snapshot_chunks_received_total") or 0
    resumed = metric(follower, "mmapd_snapshot_transfers_resumed_total") or 0
    time.sleep(1)
    catch_rss = rss_bytes(procs[follower].pid)
    cut = f", cut by a {STOP_S:.0f} s SIGSTOP at {cut_at:.1f} s" if cut_at is not None else ""
    log(f"catch-up from the snapshot in {caught_s:.1f} s{cut}: {mb(received)} in {chunks:.0f} chunks, "
        f"{resumed:.0f} transfers resumed; RSS {mb(catch_rss)} ({catch_rss / RAW:.2f}x raw)")
    print(json.dumps({
        "keys": KEYS, "raw_bytes": RAW, "import_s": imported,
        "rss_after_import": rss, "snapshot_s": snapshot_s, "snapshot_file_bytes": snap_bytes,
        "restart_ready_s": ready_s, "restart_rss": restart_rss,
        "catch_up_s": caught_s, "cut_at_s": cut_at, "chunk_bytes_received": received,
        "chunks": chunks, "resumed": resumed, "catch_up_rss": catch_rss}))
    for proc in procs.values():
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
    for proc in procs.values():
        proc.wait(120)


if __name__ == "__main__":
    WORK = tempfile.mkdtemp(prefix="mmapd-large-")
    try:
        main()
    finally:
        for leftover in PROCS.values():
            if leftover.poll() is None:
                leftover.send_signal(signal.SIGCONT)
                leftover.kill()
        if os.environ.get("BENCH_KEEP") != "1":
            shutil.rmtree(WORK, ignore_errors=True)

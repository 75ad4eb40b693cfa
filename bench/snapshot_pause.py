#!/usr/bin/env python3
"""Does a large snapshot stop the Raft loop? Heartbeat gaps and write latency while
every node of a 3-node cluster snapshots a state machine of KEYS keys.

Starts a cluster of MMAPD (default target/release/mmapd) in a temporary directory,
imports KEYS keys of 100-byte values through `mmapd-admin import`, then, with one
client writing a small key every 10 ms throughout, has each node in turn take
ROUNDS admin snapshots (a write between them, so each one serialises the whole map).
Prints, per node, the gaps between deliveries from the leader during the snapshot
phase (from `mmapd_leader_contact_gap_seconds`: buckets are 10, 25, 50, 100, 250 ms,
...; the largest bucket reached bounds the longest gap), and the probe writes'
p50/p99/max latency during the snapshot phase and during a quiet phase of the same
length before it.

Usage: bench/snapshot_pause.py [KEYS] [ROUNDS]
Env: MMAPD, MMAPD_ADMIN (binaries), BENCH_BASE_PORT (24000), BENCH_KEEP=1 (keep the dir).
See BENCHMARKS.md, "Snapshots and the Raft loop".
"""

import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MMAPD = os.environ.get("MMAPD", os.path.join(ROOT, "target/release/mmapd"))
ADMIN = os.environ.get("MMAPD_ADMIN", os.path.join(ROOT, "target/release/mmapd-admin"))
KEYS = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
BASE = int(os.environ.get("BENCH_BASE_PORT", "24000"))
PORTS = [BASE + 1, BASE + 2, BASE + 3]


def log(message):
    print(f"[snapshot_pause {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def get(port, path, timeout=5):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    connection.request("GET", path)
    response = connection.getresponse()
    return response.status, response.read().decode()


def put(connection, key, value):
    connection.request("POST", f"/set/{key}", "value=" + value,
                       {"Content-Type": "application/x-www-form-urlencoded"})
    response = connection.getresponse()
    response.read()
    return response.status


def leader():
    for port in PORTS:
        try:
            status, body = get(port, "/status")
            if status == 200 and json.loads(body)["state"] == "leader":
                return port
        except OSError:
            pass
    return None


def gap_buckets(port):
    """Cumulative bucket counts of mmapd_leader_contact_gap_seconds, by bound."""
    _, body = get(port, "/metrics")
    buckets = {}
    for line in body.splitlines():
        if line.startswith("mmapd_leader_contact_gap_seconds_bucket"):
            bound = line.split('le="')[1].split('"')[0]
            buckets[bound] = int(line.rsplit(" ", 1)[1])
    return buckets


def admin(port, *args, timeout=900):
    socket = os.path.join(WORK, f"admin-{port}.sock")
    return subprocess.run([ADMIN, "--socket", socket, "--timeout", str(timeout), *args],
                          check=True, capture_output=True, text=True).stdout.strip()


class Probe(threading.Thread):
    """Writes one small key every 10 ms to the leader; records (start time, latency)."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port, self.samples, self.failures, self.stop = port, [], 0, threading.Event()

    def run(self):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        n = 0
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                status = put(connection, "probe", str(n))
                if status // 100 != 2:
                    self.failures += 1
            except OSError:
                self.failures += 1
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.samples.append((started, time.monotonic() - started))
            n += 1
            time.sleep(max(0.0, 0.010 - (time.monotonic() - started)))


def latency_summary(samples, since, until):
    values = sorted(l for t, l in samples if since <= t < until)
    if not values:
        return "no samples"
    p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
    return (f"{len(values)} writes, p50 {statistics.median(values) * 1e3:.2f} ms, "
            f"p99 {p99 * 1e3:.2f} ms, max {values[-1] * 1e3:.2f} ms")


def gap_summary(before, after):
    """Gaps counted during the phase, per bucket (not cumulative), and the largest bucket."""
    bounds = [b for b in before if b != "+Inf"] + ["+Inf"]
    counts, previous, largest = [], 0, "none"
    for bound in bounds:
        cumulative = after.get(bound, 0) - before.get(bound, 0)
        in_bucket = cumulative - previous
        previous = cumulative
        if in_bucket and float(bound if bound != "+Inf" else "inf") >= 0.01:
            counts.append(f"<={bound}s: {in_bucket}")
        if in_bucket:
            largest = bound
    return f"largest gap <= {largest} s; gaps >= 10 ms by bucket: {', '.join(counts) or 'none'}"


WORK = tempfile.mkdtemp(prefix="snapshot-pause-", dir=os.path.join(ROOT, "target"))
processes = []
try:
    peers = ",".join(f"127.0.0.1:{p}" for p in PORTS)
    for port in PORTS:
        processes.append(subprocess.Popen(
            [MMAPD, "--port", str(port), "--peers", peers, "--data-dir", os.path.join(WORK, f"d{port}"),
             "--admin-socket", os.path.join(WORK, f"admin-{port}.sock"),
             "--snapshot-entries", "100000000", "--snapshot-bytes", str(64 << 30)],
            stdout=open(os.path.join(WORK, f"mmapd-{port}.log"), "w"), stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": "warn"}))
    for _ in range(120):
        if leader():
            break
        time.sleep(0.5)
    lead = leader()
    assert lead, f"no leader; logs in {WORK}"
    log(f"leader :{lead}; importing {KEYS} keys")
    db = os.path.join(WORK, "db.json")
    with open(db, "w") as out:
        out.write("{")
        out.write(",".join(f'"key{n:010}":"{"v" * 100}"' for n in range(KEYS)))
        out.write("}")
    started = time.monotonic()
    admin(lead, "import", db)
    log(f"imported in {time.monotonic() - started:.1f} s")
    time.sleep(3)
    probe = Probe(lead)
    probe.start()
    quiet_from = time.monotonic()
    time.sleep(10)
    before = {port: gap_buckets(port) for port in PORTS}
    phase_from = time.monotonic()
    durations = []
    for port in PORTS:
        for _ in range(ROUNDS):
            connection = http.client.HTTPConnection("127.0.0.1", lead, timeout=30)
            put(connection, "between", str(time.time()))
            started = time.monotonic()
            admin(port, "snapshot")
            durations.append(time.monotonic() - started)
            time.sleep(1)
    phase_until = time.monotonic()
    after = {port: gap_buckets(port) for port in PORTS}
    probe.stop.set()
    probe.join()
    print(f"binary: {MMAPD}")
    print(f"keys: {KEYS}; snapshots: {len(durations)} (each node {ROUNDS}), "
          f"admin snapshot took median {statistics.median(durations):.2f} s, max {max(durations):.2f} s")
    for port in PORTS:
        role = "leader" if port == lead else "follower"
        print(f"  :{port} ({role}): {gap_summary(before[port], after[port])}")
    quiet_until = quiet_from + (phase_until - phase_from)
    print(f"probe writes, quiet phase:    {latency_summary(probe.samples, quiet_from, min(quiet_until, phase_from))}")
    print(f"probe writes, snapshot phase: {latency_summary(probe.samples, phase_from, phase_until)}")
    print(f"probe write failures: {probe.failures}")
finally:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
    if os.environ.get("BENCH_KEEP") == "1":
        log(f"kept {WORK}")
    else:
        shutil.rmtree(WORK, ignore_errors=True)

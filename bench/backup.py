#!/usr/bin/env python3
"""Backup and restore of the same data in mmapd and etcd, on this machine in one run.

    python3 bench/backup.py            # 1,000,000 keys of 100 bytes, 3 rounds
    BENCH_BACKUP_KEYS=100000 BENCH_BACKUP_ROUNDS=1 python3 bench/backup.py

mmapd: `mmapd-admin backup FILE` from a running one-node cluster, then
`mmapd-admin restore FILE --data-dir DIR`. etcd 3.4 (Debian's etcd-server and
etcd-client): `etcdctl snapshot save FILE`, then `etcdctl snapshot restore FILE
--data-dir DIR`. Both nodes hold the same keys and values, loaded before timing.

For each step: wall time, the peak RSS of the tool (GNU time's maximum resident set
size) and, for the save, the peak RSS of the node while it runs (sampled every 10 ms
from /proc) against its RSS just before. Prints medians over the rounds and the ratios
mmapd/etcd (below 1: mmapd takes less), and a markdown table for BENCHMARKS.md.
"""

import base64
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MMAPD = os.path.join(ROOT, "target/release/mmapd")
ADMIN = os.path.join(ROOT, "target/release/mmapd-admin")
KEYS = int(os.environ.get("BENCH_BACKUP_KEYS", "1000000"))
ROUNDS = int(os.environ.get("BENCH_BACKUP_ROUNDS", "3"))
VALUE = "v" * 100


def log(text):
    print(f"[backup-bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port, path, ok, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            if ok(response.status, body):
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"port {port} never answered {path}")


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


def timed(command, node_pid=None, env=None):
    """Runs `command` under GNU time: (seconds, tool peak KiB, node RSS before, node peak)."""
    before = rss_kib(node_pid) if node_pid else 0
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(node_pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample) if node_pid else None
    if sampler:
        sampler.start()
    started = time.monotonic()
    result = subprocess.run(["/usr/bin/time", "-f", "%M", *command], capture_output=True, text=True, env=env)
    seconds = time.monotonic() - started
    done.set()
    if sampler:
        sampler.join()
    if result.returncode != 0:
        sys.exit(f"{command[0]} failed: {result.stdout}{result.stderr}")
    tool_kib = int(result.stderr.strip().splitlines()[-1])
    return seconds, tool_kib, before, peak[0]


def load_etcd(port):
    """KEYS puts through the v3 gateway, 128 to a transaction (etcd's default limit)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    value = base64.b64encode(VALUE.encode()).decode()
    for first in range(0, KEYS, 128):
        ops = [
            {"request_put": {"key": base64.b64encode(f"k{n}".encode()).decode(), "value": value}}
            for n in range(first, min(first + 128, KEYS))
        ]
        connection.request("POST", "/v3/kv/txn", json.dumps({"success": ops}))
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            sys.exit(f"etcd load failed: {response.status} {body[:200]}")


def main():
    work = tempfile.mkdtemp(prefix="mmapd-backup-bench-")
    processes = []
    try:
        # mmapd: one node, the keys imported in one admin command.
        port = free_port()
        data = os.path.join(work, "mmapd")
        socket_path = os.path.join(data, "admin.sock")
        node_log = open(os.path.join(work, "mmapd.log"), "w")
        mmapd = subprocess.Popen(
            [MMAPD, "--port", str(port), "--data-dir", data, "--quota-bytes", str(8 << 30)],
            stdout=node_log, stderr=node_log, env={**os.environ, "RUST_LOG": "warn"},
        )
        processes.append(mmapd)
        wait_http(port, "/status", lambda s, b: s == 200 and b'"leader"' in b)
        db = os.path.join(work, "db.json")
        with open(db, "w") as out:
            json.dump({f"k{n}": VALUE for n in range(KEYS)}, out)
        log(f"mmapd: importing {KEYS} keys")
        subprocess.run([ADMIN, "--socket", socket_path, "--timeout", "600", "import", db], check=True,
                       capture_output=True)
        os.remove(db)

        # etcd: one member, the same keys.
        etcd_port, peer_port = free_port(), free_port()
        etcd_log = open(os.path.join(work, "etcd.log"), "w")
        etcd = subprocess.Popen(
            ["etcd", "--name", "e1", "--data-dir", os.path.join(work, "etcd"),
             "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
             "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
             "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
             "--initial-cluster", f"e1=http://127.0.0.1:{peer_port}",
             "--quota-backend-bytes", str(8 << 30)],
            stdout=etcd_log, stderr=etcd_log,
        )
        processes.append(etcd)
        wait_http(etcd_port, "/health", lambda s, b: s == 200 and b"true" in b)
        log(f"etcd: loading {KEYS} keys")
        load_etcd(etcd_port)

        rows = {name: [] for name in ["mmapd save", "etcd save", "mmapd restore", "etcd restore"]}
        etcd_env = {**os.environ, "ETCDCTL_API": "3"}
        for round_ in range(ROUNDS):
            log(f"round {round_ + 1} of {ROUNDS}")
            for name in rows:
                target = os.path.join(work, f"{name.replace(' ', '-')}")
                shutil.rmtree(target, ignore_errors=True)
            mmapd_file = os.path.join(work, "mmapd.backup")
            etcd_file = os.path.join(work, "etcd.snapshot")
            for path in [mmapd_file, etcd_file]:
                if os.path.exists(path):
                    os.remove(path)
            rows["mmapd save"].append(
                timed([ADMIN, "--socket", socket_path, "--timeout", "600", "backup", mmapd_file], mmapd.pid))
            rows["etcd save"].append(
                timed(["etcdctl", "--endpoints", f"127.0.0.1:{etcd_port}", "snapshot", "save", etcd_file],
                      etcd.pid, etcd_env))
            rows["mmapd restore"].append(
                timed([ADMIN, "restore", mmapd_file, "--data-dir", os.path.join(work, "mmapd-restore")]))
            rows["etcd restore"].append(
                timed(["etcdctl", "snapshot", "restore", etcd_file, "--data-dir", os.path.join(work, "etcd-restore")],
                      None, etcd_env))
            sizes = (os.path.getsize(mmapd_file), os.path.getsize(etcd_file))

        def median(name, field):
            return statistics.median(row[field] for row in rows[name])

        print(f"\n{KEYS} keys of {len(VALUE)} bytes, {ROUNDS} rounds (medians); "
              f"files: mmapd {sizes[0] / 1e6:.1f} MB, etcd {sizes[1] / 1e6:.1f} MB\n")
        print("| step | mmapd | etcd 3.4 | mmapd/etcd |")
        print("|---|---|---|---|")
        for step in ["save", "restore"]:
            m, e = f"mmapd {step}", f"etcd {step}"
            print(f"| {step}: time | {median(m, 0):.2f} s | {median(e, 0):.2f} s | {median(m, 0) / median(e, 0):.2f}x |")
            print(f"| {step}: tool peak RSS | {median(m, 1) / 1024:.0f} MB | {median(e, 1) / 1024:.0f} MB | "
                  f"{median(m, 1) / median(e, 1):.2f}x |")
        m_growth = median("mmapd save", 3) - median("mmapd save", 2)
        e_growth = median("etcd save", 3) - median("etcd save", 2)
        print(f"| save: node RSS before -> peak | {median('mmapd save', 2) / 1024:.0f} -> "
              f"{median('mmapd save', 3) / 1024:.0f} MB (+{m_growth / 1024:.0f}) | "
              f"{median('etcd save', 2) / 1024:.0f} -> {median('etcd save', 3) / 1024:.0f} MB "
              f"(+{e_growth / 1024:.0f}) | |")
        print(f"\nload average before the end: {open('/proc/loadavg').read().split()[:3]}")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

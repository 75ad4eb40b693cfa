#!/usr/bin/env python3
"""What one durable log append costs on this disk, four ways (see BENCHMARKS.md,
"Profile of the write path"): 2 KiB appends (about one msynced persist job of mmapd's
leader at 64 connections), each made durable before the next, into a 256 MiB file that
was either reserved with posix_fallocate (as mmapd's segments are: unwritten extents)
or written with zeros first; written either with pwrite + fdatasync (etcd's WAL) or
through a shared mapping + msync(MS_SYNC) of the touched pages (mmapd's log).

Usage: bench/sync_probe.py [DIR] [--appends N] [--rounds R]
Prints one line per round and way, then the medians over rounds.
"""
import argparse
import mmap
import os
import statistics
import time

FILE_BYTES = 256 << 20


def prepare(path, zeroed):
    if os.path.exists(path):
        os.remove(path)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    if zeroed:
        chunk = b"\0" * (1 << 20)
        for _ in range(FILE_BYTES >> 20):
            os.write(fd, chunk)
    else:
        os.ftruncate(fd, FILE_BYTES)
        os.posix_fallocate(fd, 0, FILE_BYTES)
    os.fsync(fd)
    os.close(fd)


def appends(path, count, size, mapped):
    fd = os.open(path, os.O_RDWR)
    region = mmap.mmap(fd, FILE_BYTES) if mapped else None
    block = b"x" * size
    latencies = []
    offset = 0
    for _ in range(count):
        start = time.perf_counter()
        if mapped:
            region[offset:offset + size] = block
            first_page = offset & ~(mmap.PAGESIZE - 1)
            end = (offset + size + mmap.PAGESIZE - 1) & ~(mmap.PAGESIZE - 1)
            region.flush(first_page, end - first_page)
        else:
            os.pwrite(fd, block, offset)
            os.fdatasync(fd)
        latencies.append(time.perf_counter() - start)
        offset += size
    if region is not None:
        region.close()
    os.close(fd)
    latencies.sort()
    return latencies[len(latencies) // 2] * 1e6, latencies[int(len(latencies) * 0.99)] * 1e6


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dir", nargs="?", default="target")
    parser.add_argument("--appends", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args()
    ways = [(m, z) for m in (False, True) for z in (False, True)]
    results = {way: [] for way in ways}
    path = os.path.join(args.dir, "sync-probe.tmp")
    for round_ in range(args.rounds):
        # Alternate the order between rounds, so no way always runs on a warmer disk.
        for mapped, zeroed in ways if round_ % 2 == 0 else list(reversed(ways)):
            prepare(path, zeroed)
            p50, p99 = appends(path, args.appends, args.size, mapped)
            results[(mapped, zeroed)].append((p50, p99))
            name = f"{'mmap+msync' if mapped else 'pwrite+fdatasync'} {'zeroed' if zeroed else 'fallocated'}"
            print(f"round {round_ + 1} {name}: p50 {p50:.0f} us p99 {p99:.0f} us", flush=True)
    os.remove(path)
    print(f"medians over {args.rounds} rounds of {args.appends} appends of {args.size} bytes:")
    for (mapped, zeroed), rows in results.items():
        name = f"{'mmap+msync' if mapped else 'pwrite+fdatasync'} {'zeroed' if zeroed else 'fallocated'}"
        p50 = statistics.median(r[0] for r in rows)
        p99 = statistics.median(r[1] for r in rows)
        print(f"  {name:30} p50 {p50:5.0f} us  p99 {p99:5.0f} us")


if __name__ == "__main__":
    main()

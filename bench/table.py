#!/usr/bin/env python3
"""Turns bench/run's results into the "## mmapd vs etcd" section of BENCHMARKS.md.

Input: results.tsv lines `round<TAB>workload<TAB>system<TAB>rps=.. p50_us=.. p99_us=..
requests=.. non2xx=.. socket_errors=..` and memory.tsv lines `system<TAB>node<TAB>VmRSS kB`.
Figures are medians over rounds; ratios are mmapd / etcd of those medians.

With --txn-results and --tls-results (same line format; bench/run's BENCH_TXN and
BENCH_TLS sections), also the "## mmapd vs etcd: transactions" and "## mmapd vs etcd:
TLS" sections, placed after "## mmapd vs etcd"; each section is written only when its
results are not empty.
"""

import argparse
import datetime
import re
import statistics
import sys
from collections import defaultdict

SECTION = "## mmapd vs etcd"
TXN_SECTION = "## mmapd vs etcd: transactions"
TLS_SECTION = "## mmapd vs etcd: TLS"
GRPC_SECTION = "## mmapd vs etcd: the etcd v3 gRPC API"
LARGE_SECTION = "## mmapd vs etcd: large values"
WATCH_SECTION = "## Watch fan-out: mmapd vs etcd"


def parse_results(path):
    runs = defaultdict(list)  # (workload, system) -> [dict]
    order = []
    for line in open(path):
        round_, workload, system, fields = line.rstrip("\n").split("\t")
        values = {k: float(v) for k, v in re.findall(r"(\w+)=(-?[\d.]+)", fields)}
        if round_ == "profile":
            continue
        if workload not in order:
            order.append(workload)
        runs[(workload, system)].append(values)
    return order, runs


def median(runs, key):
    return statistics.median(r[key] for r in runs) if runs else None


def ms(us):
    return "-" if us is None else (f"{us / 1000:.2f} ms" if us < 100_000 else f"{us / 1000:.0f} ms")


def rate(rps):
    return "-" if rps is None else f"{rps:,.0f}"


def errors(runs):
    non2xx = sum(int(r.get("non2xx", 0)) for r in runs)
    socket = sum(int(r.get("socket_errors", 0)) for r in runs)
    failed = sum(int(r.get("errors", 0)) for r in runs)  # bench/grpc_load.rs: failed calls
    parts = []
    if failed:
        parts.append(f"{failed} failed calls" if failed > 0 else "no result")
    if non2xx:
        parts.append(f"{non2xx} non-2xx")
    if socket:
        parts.append(f"{socket} socket errors" if socket > 0 else "no result")
    return ", ".join(parts)


def mb(kb):
    """VmRSS, with RssAnon + RssFile when recorded."""
    rss, anon, file = kb[:3]
    return f"{rss / 1024:.0f} MB" + (f" ({anon / 1024:.0f} + {file / 1024:.0f})" if anon or file else "")


def memory_rows(path):
    """The table of a memory.tsv: each node's VmRSS, mmapd beside etcd, leaders first."""
    memory = ["| node | mmapd VmRSS (anon + file) | etcd VmRSS (anon + file) |", "|---|--:|--:|"]
    if path:
        by_system = defaultdict(list)
        for line in open(path):
            system, node, *kb = line.rstrip("\n").split("\t")
            by_system[system].append((node, [int(k) for k in kb] + [0, 0]))
        for nodes in by_system.values():
            nodes.sort(key=lambda node: not node[0].endswith("leader"))
        for (m_node, m_kb), (e_node, e_kb) in zip(by_system["mmapd"], by_system["etcd"]):
            role = m_node.split()[1] if m_node.split()[1] == e_node.split()[1] else f"{m_node} / {e_node}"
            memory.append(f"| {role} | {mb(m_kb)} | {mb(e_kb)} |")
        totals = [sum(kb[0] for _, kb in by_system[s]) / 1024 for s in ("mmapd", "etcd")]
        memory.append(f"| total | {totals[0]:.0f} MB | {totals[1]:.0f} MB |")
    return memory


def build(args):
    order, runs = parse_results(args.results)
    rows = []
    summary = {}
    for workload in order:
        m, e = runs.get((workload, "mmapd"), []), runs.get((workload, "etcd"), [])
        if not m or not e:
            continue
        m_rps, e_rps = median(m, "rps"), median(e, "rps")
        m_p50, e_p50 = median(m, "p50_us"), median(e, "p50_us")
        m_p99, e_p99 = median(m, "p99_us"), median(e, "p99_us")
        ratio_rps = m_rps / e_rps if e_rps else float("nan")
        ratio_p99 = m_p99 / e_p99 if e_p99 else float("nan")
        notes = []
        if errors(m):
            notes.append("mmapd: " + errors(m))
        if errors(e):
            notes.append("etcd: " + errors(e))
        name = workload + (" **(errors)**" if notes else "")
        rows.append(
            f"| {name} | {rate(m_rps)} | {ms(m_p50)} | {ms(m_p99)} | {rate(e_rps)} | {ms(e_p50)} | "
            f"{ms(e_p99)} | {ratio_rps:.2f}x | {ratio_p99:.2f}x |"
        )
        summary[workload] = dict(
            m_rps=m_rps, e_rps=e_rps, m_p50=m_p50, e_p50=e_p50, m_p99=m_p99, e_p99=e_p99,
            ratio_rps=ratio_rps, ratio_p99=ratio_p99, notes=notes,
            m_all=[r["rps"] for r in m], e_all=[r["rps"] for r in e],
        )
    ceiling = runs.get(("local read c=64", "ceiling"), [])
    ceiling_rps = median(ceiling, "rps")
    if ceiling:
        rows.append(
            f"| hyper ceiling (GET, c=64) | {rate(ceiling_rps)} | {ms(median(ceiling, 'p50_us'))} | "
            f"{ms(median(ceiling, 'p99_us'))} | | | | | |"
        )

    lines = [
        "| workload | mmapd req/s | p50 | p99 | etcd req/s | p50 | p99 | req/s mmapd/etcd | p99 mmapd/etcd |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
        *rows,
    ]

    notes = [f"- {w}: {'; '.join(s['notes'])}" for w, s in summary.items() if s["notes"]]
    spread = [
        f"- {w}: mmapd {', '.join(rate(x) for x in s['m_all'])}; etcd {', '.join(rate(x) for x in s['e_all'])}"
        for w, s in summary.items()
    ]

    def goal(text, ok):
        return f"| {text} | {'met' if ok else '**not met**'} |"

    def get(workload, key):
        return summary.get(workload, {}).get(key)

    goals = ["| goal | result |", "|---|---|"]
    w64, w1, w256 = "write c=64", "write c=1", "write c=256"
    lin, loc = "linearizable read c=64", "local read c=64"
    if w64 in summary:
        s = summary[w64]
        goals.append(goal(f"writes c=64: >= 3x etcd req/s ({s['ratio_rps']:.2f}x) and p99 <= 0.5x "
                          f"({s['ratio_p99']:.2f}x)", s["ratio_rps"] >= 3 and s["ratio_p99"] <= 0.5))
    if w1 in summary:
        s = summary[w1]
        r = s["m_p50"] / s["e_p50"]
        goals.append(goal(f"writes c=1: p50 <= 0.5x etcd's ({r:.2f}x)", r <= 0.5))
    if w256 in summary:
        s = summary[w256]
        goals.append(goal(f"writes c=256: >= 3x etcd req/s ({s['ratio_rps']:.2f}x), no errors "
                          f"({'none' if not s['notes'] else '; '.join(s['notes'])})",
                          s["ratio_rps"] >= 3 and not s["notes"]))
    if lin in summary:
        s = summary[lin]
        goals.append(goal(f"linearizable reads c=64: >= 3x etcd quorum reads ({s['ratio_rps']:.2f}x)",
                          s["ratio_rps"] >= 3))
    if loc in summary:
        s = summary[loc]
        of_ceiling = s["m_rps"] / ceiling_rps if ceiling_rps else float("nan")
        goals.append(goal(f"local reads c=64: >= 1.5x etcd ({s['ratio_rps']:.2f}x) and >= 0.5x the hyper "
                          f"ceiling ({of_ceiling:.2f}x)", s["ratio_rps"] >= 1.5 and of_ceiling >= 0.5))

    memory = memory_rows(args.memory)

    return "\n".join(lines), "\n".join(goals), "\n".join(memory), notes, spread


def section(args, table, goals, memory, notes, spread):
    body = f"""{SECTION}

Both clusters run 3 nodes on loopback on this one machine, data directories under one
temporary directory on the same disk; each acknowledges a write once it is durable on a
majority (mmapd: msync; etcd 3.4: WAL fsync). Load goes to the leader (except the
"via follower" row) with the same wrk scripts (`bench/wrk/`): 100-byte values over
10,000 keys (prefilled on both before the first run), random keys, wrk `--timeout 10s`.
Writes: mmapd `POST /set/<key>` vs etcd `PUT /v2/keys/<key>`, both form `value=`.
Linearizable reads: mmapd `GET /v1/kv/<key>` vs etcd `GET /v2/keys/<key>?quorum=true`.
Local reads: mmapd `?consistency=stale` vs etcd's default GET. The mix is 90% linearizable
reads, 10% writes. The ceiling is `examples/ceiling.rs`, a hyper 1 server answering 200
without work, driven by the local-read script.

Command: `bench/run` ({args.rounds} rounds x {args.seconds} s per run, systems alternating
within each workload and the first system alternating between rounds; {args.elapsed} s of
load in all). Figures are medians over rounds; ratios are mmapd / etcd (req/s above 1 and
p99 below 1 favour mmapd). p50 and p99 are wrk's latency percentiles.

Machine: {args.machine}.

{table}

Goals (from this run):

{goals}

Resident memory (VmRSS) after the write runs of round 1 (10,000 keys prefilled, then
overwritten by the write runs at 1 to 256 connections):

{memory}

Req/s per round (to judge the noise):

{chr(10).join(spread)}
"""
    if notes:
        body += "\nErrors (summed over rounds):\n\n" + "\n".join(notes) + "\n"
    return body


# ------------------------------------------------------------------ watch fan-out
WATCH_SHAPES = {"keys": "1,000 watchers, one key each", "prefix": "100 watchers of one prefix"}


def parse_watch(path):
    runs = defaultdict(list)  # (shape, system) -> [dict]
    for line in open(path):
        round_, shape, system, fields = line.rstrip("\n").split("\t")
        runs[(shape, system)].append({k: float(v) for k, v in re.findall(r"(\w+)=(-?[\d.]+)", fields)})
    return runs


def watch_section(args):
    runs = parse_watch(args.watch_results)
    rows, spread, goals = [], [], []
    for shape, label in WATCH_SHAPES.items():
        m, e = runs.get((shape, "mmapd"), []), runs.get((shape, "etcd"), [])
        if not m or not e:
            continue
        med = {(s, k): median(r, k) for s, r in (("m", m), ("e", e)) for k in ("p50_us", "p99_us", "max_us", "rate")}
        lost = {s: (sum(int(x["missed"]) for x in r), sum(int(x["late"]) for x in r),
                    sum(int(x["cancelled"]) for x in r), sum(int(x["expected"]) for x in r))
                for s, r in (("m", m), ("e", e))}

        def lost_text(s):
            missed, late, cancelled, expected = lost[s]
            text = f"{missed:,} / {late:,} of {expected:,}"
            return text + (f", {cancelled} cancelled" if cancelled else "")

        ratio = med[("m", "p99_us")] / med[("e", "p99_us")] if med[("e", "p99_us")] else float("nan")
        rows.append(
            f"| {label} | {med[('m', 'rate')]:,.0f} | {ms(med[('m', 'p50_us')])} | {ms(med[('m', 'p99_us')])} | "
            f"{ms(med[('m', 'max_us')])} | {lost_text('m')} | {med[('e', 'rate')]:,.0f} | {ms(med[('e', 'p50_us')])} | "
            f"{ms(med[('e', 'p99_us')])} | {ms(med[('e', 'max_us')])} | {lost_text('e')} | {ratio:.2f}x |"
        )
        spread.append(
            f"- {label}: mmapd {', '.join(ms(x['p99_us']) for x in m)}; etcd {', '.join(ms(x['p99_us']) for x in e)}"
        )
        ok = med[("m", "p99_us")] <= 10_000 and lost["m"][0] == 0
        goals.append(f"| {label}: mmapd p99 <= 10 ms ({ms(med[('m', 'p99_us')])}), nothing missed "
                     f"| {'met' if ok else '**not met**'} |")
    table = "\n".join([
        "| shape | mmapd writes/s | p50 | p99 | max | missed / late of expected | etcd writes/s | p50 | p99 | max "
        "| missed / late of expected | p99 mmapd/etcd |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        *rows,
    ])
    return f"""{WATCH_SECTION}

One mmapd node and one etcd 3.4 member (single nodes, data on the same disk), both up for
the whole section; `bench/watch_fanout.rs` opens the watch streams (mmapd `GET /v1/watch`,
etcd `POST /v3/watch` on its JSON gateway), waits until every one is established, then
writes at {args.watch_rate} writes/s (open loop, 100-byte values carrying their send time;
mmapd `PUT /v1/kv/<key>`, etcd `POST /v3/kv/put`). Latency is from a write's send to its
event's arrival at a watcher, over every event at every watcher; "missed" are events not
received 10 s after the last write, "late" those received more than 1 s after their write.
The shapes: 1,000 watchers on distinct keys, the writer going round them (each write for
one watcher); 100 watchers of one prefix, the writer going round 1,000 keys under it (each
write for all 100: 100,000 events/s). Each watcher is its own HTTP connection.

Command: `bench/run` (`BENCH_WATCH=1`, the default; `BENCH_WATCH_ONLY=1` stops after this
section): {args.watch_rounds} rounds x {args.watch_seconds} s per run, the first system
alternating between rounds. Figures are medians over rounds (missed and late are sums).

Machine: {args.machine}.

{table}

Goal (the issue): p99 <= 10 ms at 1,000 writes/s on one node.

| goal | result |
|---|---|
{chr(10).join(goals)}

p99 per round (to judge the noise):

{chr(10).join(spread)}
"""


def section_end(lines, start):
    return next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))


def replace_section(path, text, title=SECTION, after=None):
    """Replaces the section `title` with `text`; a missing one goes after the section
    `after` (when there is one), else at the end."""
    try:
        current = open(path).read()
    except FileNotFoundError:
        current = "# Benchmarks\n"
    lines = current.split("\n")
    start = next((i for i, line in enumerate(lines) if line.strip() == title), None)
    if start is None:
        anchor = next((i for i, line in enumerate(lines) if after and line.strip() == after), None)
        if anchor is None:
            new = current.rstrip("\n") + "\n\n" + text
        else:
            end = section_end(lines, anchor)
            new = "\n".join(lines[:end]).rstrip("\n") + "\n\n" + text + "\n" + "\n".join(lines[end:])
    else:
        end = section_end(lines, start)
        new = "\n".join(lines[:start]) + ("\n" if start else "") + text + "\n" + "\n".join(lines[end:])
    open(path, "w").write(new.rstrip("\n") + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", help="bench/run's results.tsv (the mmapd vs etcd section)")
    parser.add_argument("--memory")
    parser.add_argument("--rounds", default="?")
    parser.add_argument("--seconds", default="?")
    parser.add_argument("--elapsed", default="?")
    parser.add_argument("--machine", default="unknown")
    parser.add_argument("--markdown", help="BENCHMARKS.md to update")
    parser.add_argument("--txn-results", help="bench/run's BENCH_TXN results")
    parser.add_argument("--txn-elapsed", default="?")
    parser.add_argument("--tls-results", help="bench/run's BENCH_TLS results")
    parser.add_argument("--tls-elapsed", default="?")
    parser.add_argument("--grpc-results", help="bench/run's BENCH_GRPC results")
    parser.add_argument("--grpc-elapsed", default="?")
    parser.add_argument("--large-results", help="bench/run's BENCH_LARGE results")
    parser.add_argument("--large-memory", help="bench/run's BENCH_LARGE memory.tsv")
    parser.add_argument("--large-elapsed", default="?")
    parser.add_argument("--watch-results", help="bench/run's watch.tsv (the watch fan-out section)")
    parser.add_argument("--watch-rounds", default="?")
    parser.add_argument("--watch-seconds", default="?")
    parser.add_argument("--watch-rate", default="?")
    args = parser.parse_args()
    sections = []  # (title, text)
    if has_results(args.results):
        table, goals, memory, notes, spread = build(args)
        sections.append((SECTION, section(args, table, goals, memory, notes, spread)))
    if args.txn_results and has_results(args.txn_results):
        sections.append((TXN_SECTION, txn_section(args)))
    if args.tls_results and has_results(args.tls_results):
        sections.append((TLS_SECTION, tls_section(args)))
    if args.grpc_results and has_results(args.grpc_results):
        sections.append((GRPC_SECTION, grpc_section(args)))
    if args.large_results and has_results(args.large_results):
        sections.append((LARGE_SECTION, large_section(args)))
    if args.watch_results and has_results(args.watch_results):
        sections.append((WATCH_SECTION, watch_section(args)))
    after = SECTION
    for title, text in sections:
        print(text)
        if args.markdown:
            replace_section(args.markdown, text, title, after)
        after = title
    if args.markdown and sections:
        print(f"updated {args.markdown}", file=sys.stderr)


def has_results(path):
    if not path:
        return False
    try:
        return any(line.strip() for line in open(path))
    except FileNotFoundError:
        return False


def ratio(a, b):
    return a / b if a is not None and b else float("nan")


def compare_rows(runs, pairs):
    """Table rows of pairs (label, (workload, system) of the left, (workload, system) of
    the right): req/s, p50 and p99 of each, and the ratios left / right."""
    rows, notes, spread = [], [], []
    for label, left, right in pairs:
        l, r = runs.get(left, []), runs.get(right, [])
        if not l or not r:
            continue
        lm = {k: median(l, k) for k in ("rps", "p50_us", "p99_us")}
        rm = {k: median(r, k) for k in ("rps", "p50_us", "p99_us")}
        problems = [f"{side[1]}: {errors(x)}" for side, x in ((left, l), (right, r)) if errors(x)]
        for side, x in ((left, l), (right, r)):
            missed = sum(int(run.get("not_succeeded", 0)) for run in x)
            if missed:
                problems.append(f"{side[1]}: {missed} answers without `succeeded: true`")
        if problems:
            notes.append(f"- {label}: {'; '.join(problems)}")
        rows.append(
            f"| {label}{' **(errors)**' if problems else ''} | {rate(lm['rps'])} | {ms(lm['p50_us'])} | "
            f"{ms(lm['p99_us'])} | {rate(rm['rps'])} | {ms(rm['p50_us'])} | {ms(rm['p99_us'])} | "
            f"{ratio(lm['rps'], rm['rps']):.2f}x | {ratio(lm['p50_us'], rm['p50_us']):.2f}x | "
            f"{ratio(lm['p99_us'], rm['p99_us']):.2f}x |"
        )
        spread.append(f"- {label}: {left[1]} {', '.join(rate(x['rps']) for x in l)}; "
                      f"{right[1]} {', '.join(rate(x['rps']) for x in r)}")
    return rows, notes, spread


def txn_section(args):
    intro = """`bench/run`'s `BENCH_TXN` section, on the same two 3-node clusters as above (load to the
leaders): mmapd `POST /v1/txn` against etcd 3.4's v3 JSON gateway `POST /v3/kv/txn` (keys
and values base64; the gateway hands each request to etcd's gRPC server over a local
connection, which is part of what etcd's JSON API costs). The transaction
(`bench/wrk/txn.lua`) is "update if it exists" on a random key of the 10,000 prefilled
ones (in etcd's v3 keyspace, which is not its v2 one): compare the key's version > 0, put
a 100-byte value on success, get the key on failure. Every one succeeds (wrk counts the
2xx answers without `"succeeded":true`: none, or a note below); both systems put each
one through the log."""
    return versus_section(TXN_SECTION, args.txn_results, intro, "BENCH_TXN", args.txn_elapsed, args)


def grpc_section(args):
    intro = """`bench/run`'s `BENCH_GRPC` section, on the same two 3-node clusters as above (load to the
leaders): etcd's v3 gRPC KV API on both, mmapd's etcd front against etcd 3.4 itself,
driven by `bench/grpc_load.rs` (our own tonic client over hyper's HTTP/2, one connection
per 16 clients): `Put` of a random key of 100,000 and linearizable `Range` of one of
10,000 written first, 8-byte keys and 256-byte values as etcd's published benchmark
setup, closed loop."""
    return versus_section(GRPC_SECTION, args.grpc_results, intro, "BENCH_GRPC", args.grpc_elapsed, args)


def large_section(args):
    intro = """`bench/run`'s `BENCH_LARGE` section, on the same two 3-node clusters as above (load to
the leaders): writes of 64 KiB values over 1,000 keys and of 1 MiB values over 100 keys
(etcd's request limit is 1.5 MiB), 16 connections, `bench/wrk/write_large.lua` (mmapd
`POST /set`, etcd `PUT /v2/keys`, both a form field `value`)."""
    body = versus_section(LARGE_SECTION, args.large_results, intro, "BENCH_LARGE", args.large_elapsed, args)
    order, runs = parse_results(args.large_results)
    sizes = {"write 64 KiB c=16": 65536, "write 1 MiB c=16": 1 << 20}
    lines = []
    for workload in order:
        size = sizes.get(workload)
        m, e = median(runs.get((workload, "mmapd"), []), "rps"), median(runs.get((workload, "etcd"), []), "rps")
        if size and m is not None and e is not None:
            lines.append(f"- {workload}: mmapd {m * size / 1e6:,.0f} MB/s, etcd {e * size / 1e6:,.0f} MB/s of values")
    body += "\nThroughput of values (median req/s times the value size):\n\n" + "\n".join(lines) + "\n"
    body += ("\nResident memory (VmRSS) of every node after the last large-value run:\n\n"
             + "\n".join(memory_rows(args.large_memory)) + "\n")
    return body


def versus_section(title, results, intro, flag, elapsed, args):
    """A section of mmapd-vs-etcd rows from a results file: `intro`, the command, the
    table of medians and ratios, and each round's req/s."""
    order, runs = parse_results(results)
    rows, notes, spread = compare_rows(runs, [(w, (w, "mmapd"), (w, "etcd")) for w in order])
    body = f"""{title}

{intro}

Command: `bench/run`, {datetime.date.today()}, with `{flag}=1` (the default) ({args.rounds} rounds x {args.seconds} s
per run, the first system alternating between rounds; {elapsed} s in all).
Figures are medians over rounds; ratios are mmapd / etcd (req/s above 1, p50 and p99
below 1 favour mmapd).

Machine: {args.machine}.

| workload | mmapd req/s | p50 | p99 | etcd req/s | p50 | p99 | req/s mmapd/etcd | p50 mmapd/etcd | p99 mmapd/etcd |
|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|
{chr(10).join(rows)}

Req/s per round:

{chr(10).join(spread)}
"""
    if notes:
        body += "\nErrors (summed over rounds):\n\n" + "\n".join(notes) + "\n"
    return body


def tls_section(args):
    order, runs = parse_results(args.tls_results)
    names = []  # workload names without " TLS on" / " TLS off"
    for w in order:
        name = w.rsplit(" TLS ", 1)[0]
        if name not in names:
            names.append(name)
    versus, notes, spread = compare_rows(
        runs,
        [(f"{n}, TLS {state}", (f"{n} TLS {state}", "mmapd"), (f"{n} TLS {state}", "etcd"))
         for n in names for state in ("on", "off")],
    )
    cost = []
    for n in names:
        cells = []
        for system in ("mmapd", "etcd"):
            on, off = runs.get((f"{n} TLS on", system), []), runs.get((f"{n} TLS off", system), [])
            if not on or not off:
                cells = None
                break
            cells += [f"{ratio(median(on, k), median(off, k)):.2f}x" for k in ("rps", "p50_us", "p99_us")]
        if cells:
            cost.append(f"| {n} | " + " | ".join(cells) + " |")
    body = f"""{TLS_SECTION}

`bench/run`'s `BENCH_TLS` section: TLS on vs off, beside etcd with TLS on, the same
certificates. A throwaway PKI made with openssl in the run's directory (one CA, ECDSA
P-256; per node a certificate with IP SAN 127.0.0.1, extendedKeyUsage serverAuth and
clientAuth) serves a second 3-node mmapd cluster (`--tls-cert`, `--tls-key`, `--tls-ca`:
HTTPS for clients, mutual TLS between peers) and a second 3-node etcd 3.4 (`--cert-file`,
`--key-file`, and `--peer-cert-file`, `--peer-key-file`, `--peer-trusted-ca-file`,
`--peer-client-cert-auth`; every URL, listen, advertise and initial-cluster, https).
Clients present no certificate (wrk cannot), so neither side checks them: mmapd runs
without `--client-ca`, and etcd without `--trusted-ca-file`, which in etcd 3.4 turns on
client-certificate auth whatever `--client-cert-auth` says (etcd issue 11124: with it,
a client without a certificate has its connection dropped after the handshake). "TLS off" is the plain clusters above, run in the same rounds,
interleaved (each round: one system TLS on then off, the other off then on). Workloads
and wrk scripts as above (writes `POST /set` vs `PUT /v2/keys`, linearizable reads), 64
keep-alive connections, so the handshakes are a negligible part of a run and the cost
measured is encryption and the TLS layer of each request and of the peer traffic.

Command: `bench/run`, {datetime.date.today()}, with `BENCH_TLS=1` (the default) ({args.rounds} rounds x {args.seconds} s
per run; {args.tls_elapsed} s in all). Medians over rounds; ratios mmapd / etcd.

Machine: {args.machine}.

| workload | mmapd req/s | p50 | p99 | etcd req/s | p50 | p99 | req/s mmapd/etcd | p50 mmapd/etcd | p99 mmapd/etcd |
|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|
{chr(10).join(versus)}

What TLS costs each system (TLS on / off, medians; req/s below 1 and latencies above 1
are the cost):

| workload | mmapd req/s | mmapd p50 | mmapd p99 | etcd req/s | etcd p50 | etcd p99 |
|---|--:|--:|--:|--:|--:|--:|
{chr(10).join(cost)}

Req/s per round:

{chr(10).join(spread)}
"""
    if notes:
        body += "\nErrors (summed over rounds):\n\n" + "\n".join(notes) + "\n"
    return body


if __name__ == "__main__":
    main()

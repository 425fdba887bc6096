#!/usr/bin/env python3
"""Tables of docs/BENCHMARKS-rows.md from scripts/bench-rows.sh's results (medians of the runs).

Usage: scripts/bench-rows-report.py [target/bench-rows/results.jsonl] > tables.md
"""
import json
import statistics as st
import sys

path = sys.argv[1] if len(sys.argv) > 1 else "target/bench-rows/results.jsonl"
rows = [json.loads(l) for l in open(path) if l.startswith("{")]


def runs(prefix):
    return [r for r in rows if r.get("label", "").startswith(prefix)]


def med(vals):
    vals = [v for v in vals if v is not None]
    return st.median(vals) if vals else None


def f(v, fmt="{:,.0f}"):
    return "n/a" if v is None else fmt.format(v)


def each(vals, fmt):
    return ", ".join(f(v, fmt) for v in vals)


def server_us(r):
    return r.get("server_us_per_change")


out = []


def scale_tables(prefix, title):
    subs = sorted({r["params"]["subscriptions"] for r in runs(f"{prefix}-")})
    if not subs:
        return
    out.append(f"### {title}")
    out.append("")
    out.append("| Subscriptions | Kind | Changes/s end to end (median) | Server CPU per change (median) | "
               "runs: CPU per change (µs) | Deliveries lost / extra (all runs) | Subscribe all (s) |")
    out.append("|---|---|---|---|---|---|---|")
    table = {}
    for n in subs:
        for k in kinds:
            rs = runs(f"{prefix}-{k}-{n}#")
            if not rs:
                continue
            rate = med([r.get("changes_per_s") for r in rs])
            cpu = med([server_us(r) for r in rs])
            table[(k, n)] = (rate, cpu)
            lost = sum(r.get("lost", 0) for r in rs)
            extra = sum(r.get("extra", 0) for r in rs)
            sub = med([r.get("subscribe_s") for r in rs])
            out.append(f"| {n:,} | {k} | {f(rate)} | {f(cpu, '{:.1f} µs')} | "
                       f"{each([server_us(r) for r in rs], '{:.1f}')} | {lost} / {extra} | {f(sub, '{:.2f}')} |")
    out.append("")
    out.append("| Subscriptions | eq CPU per change | range CPU per change | range / eq | "
               "message CPU per change | eq / message | eq changes/s | range changes/s |")
    out.append("|---|---|---|---|---|---|---|---|")
    for n in subs:
        e = table.get(("eq", n), (None, None))
        g = table.get(("range", n), (None, None))
        m = table.get(("message", n), (None, None))
        ratio = g[1] / e[1] if e[1] and g[1] else None
        em = e[1] / m[1] if e[1] and m[1] else None
        out.append(f"| {n:,} | {f(e[1], '{:.1f} µs')} | {f(g[1], '{:.1f} µs')} | {f(ratio, '{:.1f}x')} | "
                   f"{f(m[1], '{:.1f} µs')} | {f(em, '{:.2f}x')} | {f(e[0])} | {f(g[0])} |")
    out.append("")


kinds = ["eq", "range", "message"]
scale_tables("scale", "Every subscription receives (change j to user j mod S)")
scale_tables("fixed", "100 receiving users, the other subscriptions passed over (--active-users 100)")
out.append("| Latency, 1,000 changes/s, 1,000 subscriptions | p50 | p90 | p99 | p99.9 | max | "
           "server CPU per change | runs p50 / p99 | lost / extra |")
out.append("|---|---|---|---|---|---|---|---|---|")
for k, what in (("eq", "row change, `user_id=eq.U`"), ("message", "logical message, plain channel")):
    rs = runs(f"latency-{k}#")
    if not rs:
        continue
    q = {p: med([(r.get("latency") or {}).get(p) for r in rs]) for p in
         ("p50_us", "p90_us", "p99_us", "p999_us", "max_us")}
    ms = lambda v: None if v is None else v / 1000.0
    per = "; ".join(f"{ms(r['latency']['p50_us']):.2f} / {ms(r['latency']['p99_us']):.2f}" for r in rs)
    lost = sum(r.get("lost", 0) for r in rs)
    extra = sum(r.get("extra", 0) for r in rs)
    out.append(f"| {what} | {f(ms(q['p50_us']), '{:.2f} ms')} | {f(ms(q['p90_us']), '{:.2f} ms')} | "
               f"{f(ms(q['p99_us']), '{:.2f} ms')} | {f(ms(q['p999_us']), '{:.2f} ms')} | "
               f"{f(ms(q['max_us']), '{:.2f} ms')} | {f(med([server_us(r) for r in rs]), '{:.1f} µs')} | "
               f"{per} ms | {lost} / {extra} |")
out.append("")
out.append("| Label | changes/s | server µs/change | machine busy | other CPU s | disturbed |")
out.append("|---|---|---|---|---|---|")
for r in rows:
    u = r.get("usage") or {}
    out.append(f"| {r.get('label')} | {f(r.get('changes_per_s'))} | {f(server_us(r), '{:.1f}')} | "
               f"{f((u.get('machine_busy') or 0) * 100, '{:.0f} %')} | {f(u.get('other_cpu_s'), '{:.1f}')} | "
               f"{u.get('disturbed')} |")
print("\n".join(out))

#!/usr/bin/env python3
"""The bookkeeping of benches/compare/run.sh: the run's raw JSON lines, its report, its plots.

    report.py info RAW KEY=VALUE...     start RAW with the run's "info" line (machine, versions, load)
    report.py finish RAW                add the load average and wall time at the end to the info line
    report.py add RAW IMPL [KEY=VALUE...]  validate the JSON line on stdin, stamp it, append it
    report.py error RAW IMPL BENCH N MESSAGE [skipped]
    report.py render RAW REPORT.md PLOTDIR  write the Markdown report and the plots (SVG)

Lines in RAW: {"info": {...}} first; micro-benchmarks {"impl","bench","n","unit","results",
"meta","round"} (the allocation pass has "pass": "allocs"); load runs {"impl","bench":
"echo"|"http"|"http-sleepN", loadgen's fields}; failures {"impl","bench","n","error"[,"skipped"]}.

Only ratios between implementations of this one run are shown: a number from another run
(another day, another load on the machine) is never divided by one of this run.
"""

import json
import os
import platform
import sys
import time

IMPL_ORDER = ["weft", "tokio", "twisted"]
# The plots' file type: svg (default; text, small, sharp at any size) or png.
PLOT_EXT = os.environ.get("PLOT_FORMAT", "svg")
COLOURS = {"weft": "#1f77b4", "tokio": "#d62728", "twisted": "#2ca02c"}
BENCH_ORDER = [
    "chain",
    "chain-nested",
    "fanout",
    "cancel-chain",
    "gather",
    "timers",
    "timers-cancel",
    "reactor-timers",
]


# ---------------------------------------------------------------------------
# collecting
# ---------------------------------------------------------------------------


def read_lines(raw):
    with open(raw) as f:
        return [json.loads(l) for l in f if l.strip()]


def append(raw, obj):
    with open(raw, "a") as f:
        f.write(json.dumps(obj) + "\n")


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
            mem = f"{kib / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu_model": cpu,
        "cpus": os.cpu_count(),
        "mem": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def locked_versions(lock_path, names):
    """Versions of `names` in a Cargo.lock (first match of each)."""
    import tomllib

    try:
        with open(lock_path, "rb") as f:
            packages = tomllib.load(f).get("package", [])
    except OSError:
        return {}
    out = {}
    for p in packages:
        if p["name"] in names and p["name"] not in out:
            out[p["name"]] = p["version"]
    return out


def cmd_info(raw, pairs):
    info = dict(p.split("=", 1) for p in pairs)
    info.update(machine())
    try:
        import twisted

        info["twisted"] = twisted.__version__
    except ImportError:
        info["twisted"] = "?"
    here = os.path.dirname(os.path.abspath(__file__))
    info.update(locked_versions(os.path.join(here, "tokio-peer", "Cargo.lock"), {"tokio", "hyper", "futures"}))
    info.update({"weft_" + k: v for k, v in locked_versions(os.path.join(here, "..", "..", "Cargo.lock"), {"mio"}).items()})
    info["date"] = time.strftime("%Y-%m-%d")
    info["started"] = time.strftime("%H:%M:%S")
    info["start_epoch"] = time.time()
    info["load_before"] = loadavg()
    with open(raw, "w") as f:
        f.write(json.dumps({"info": info}) + "\n")


def cmd_finish(raw):
    lines = read_lines(raw)
    for l in lines:
        if "info" in l:
            l["info"]["load_after"] = loadavg()
            l["info"]["wall_s"] = round(time.time() - l["info"].get("start_epoch", time.time()))
    with open(raw, "w") as f:
        f.writelines(json.dumps(l) + "\n" for l in lines)


def cmd_add(raw, impl, pairs):
    """Validate one JSON line from stdin and append it with `impl` and the extra fields."""
    text = sys.stdin.read()
    line = next((l for l in text.splitlines() if l.startswith("{")), None)
    if line is None:
        sys.exit(f"no JSON line in the output: {text[:200]!r}")
    d = json.loads(line)
    if "results" in d and not isinstance(d["results"], list):
        sys.exit("results is not a list")
    if "results" not in d and "msgs" not in d:
        sys.exit("neither a benchmark nor a load generator line")
    d["impl"] = impl
    for p in pairs:
        k, v = p.split("=", 1)
        d[k] = int(v) if v.isdigit() else v
    append(raw, d)


def cmd_error(raw, impl, bench, n, message, skipped=False):
    d = {"impl": impl, "bench": bench, "n": int(n), "error": message}
    if skipped:
        d["skipped"] = True
    append(raw, d)


# ---------------------------------------------------------------------------
# formatting
# ---------------------------------------------------------------------------


def ns(x):
    if x is None:
        return "—"
    if x >= 100_000:
        return f"{x / 1000:,.0f} µs"
    if x >= 10_000:
        return f"{x / 1000:.1f} µs"
    return f"{x:,.0f} ns" if x >= 100 else f"{x:.1f} ns"


def times(a, b):
    """How many times faster the implementation costing `b` is than the one costing `a`."""
    if not a or not b:
        return "—"
    r = a / b
    return f"{r:,.0f}×" if r >= 100 else f"{r:.1f}×" if r >= 10 else f"{r:.2f}×"


def num(x, digits=0):
    return "—" if x is None else f"{x:,.{digits}f}"


def impl_key(name):
    return (IMPL_ORDER.index(name) if name in IMPL_ORDER else len(IMPL_ORDER), name)


def table(w, header, rows, align=None):
    w("| " + " | ".join(header) + " |")
    w("|" + "|".join(align or ["---"] + ["---:"] * (len(header) - 1)) + "|")
    for r in rows:
        w("| " + " | ".join(str(c) for c in r) + " |")
    w("")


# ---------------------------------------------------------------------------
# the run's numbers
# ---------------------------------------------------------------------------


class Run:
    def __init__(self, lines):
        self.info = next((l["info"] for l in lines if "info" in l), {})
        self.errors = [l for l in lines if "error" in l]
        timed = [l for l in lines if "results" in l and l.get("pass") != "allocs"]
        counted = [l for l in lines if "results" in l and l.get("pass") == "allocs"]
        self.units = {}
        # (impl, bench, n) -> {variant: merged result}, variants in the order printed
        self.micro = {}
        for l in timed:
            self.units[l["bench"]] = l.get("unit", "")
            variants = self.micro.setdefault((l["impl"], l["bench"], l["n"]), {})
            for r in l["results"]:
                variants.setdefault(r["variant"], []).append(r)
        for key, variants in self.micro.items():
            self.micro[key] = {v: merge_rounds(rs) for v, rs in variants.items()}
        self.allocs = {}
        for l in counted:
            for r in l["results"]:
                if r.get("allocs_per_op") is not None:
                    self.allocs[(l["impl"], l["bench"], l["n"], r["variant"])] = r
        self.load = {}
        for l in lines:
            if l.get("bench") in ("echo",) or str(l.get("bench", "")).startswith("http"):
                if "msgs" in l and "error" not in l:
                    self.load.setdefault(l["bench"], []).append(l)
        impls = {k[0] for k in self.micro} | {l["impl"] for ls in self.load.values() for l in ls}
        self.impls = sorted(impls, key=impl_key)
        self.benches = sorted({k[1] for k in self.micro}, key=lambda b: (BENCH_ORDER + [b]).index(b))
        self.sizes = sorted({k[2] for k in self.micro})

    def primary(self, impl, bench, n):
        vs = self.micro.get((impl, bench, n), {})
        return next((r for r in vs.values() if r.get("ns_per_op") is not None), None)

    def best(self, impl, bench, n):
        vs = [r for r in self.micro.get((impl, bench, n), {}).values() if r.get("ns_per_op") is not None]
        return min(vs, key=lambda r: r["ns_per_op"]) if vs else None

    def allocs_of(self, impl, bench, n, variant):
        r = self.allocs.get((impl, bench, n, variant))
        return None if r is None else r["allocs_per_op"]


def merge_rounds(rs):
    """Rounds of one variant -> one result: the lowest round median (a slow period of the
    machine only ever adds time), the fastest repetition, every round's median."""
    ok = [r for r in rs if r.get("ns_per_op") is not None]
    if not ok:
        return rs[0]
    best = dict(min(ok, key=lambda r: r["ns_per_op"]))
    best["min_ns_per_op"] = min(r.get("min_ns_per_op", r["ns_per_op"]) for r in ok)
    best["reps"] = sum(r.get("reps", 0) for r in ok)
    best["round_medians"] = [r["ns_per_op"] for r in ok]
    return best


# ---------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "weft", "font.size": 9})
    import matplotlib.pyplot as plt

    return plt


def plot_micro_axes(ax, run, bench):
    for impl in run.impls:
        prim = [(n, run.primary(impl, bench, n)) for n in run.sizes]
        prim = [(n, r) for n, r in prim if r]
        if not prim:
            continue
        colour = COLOURS.get(impl)
        ax.plot([n for n, _ in prim], [r["ns_per_op"] for _, r in prim], "o-", color=colour, label=impl)
        best = [(n, run.best(impl, bench, n)) for n in run.sizes]
        best = [(n, b) for (n, b), (_, p) in zip(best, prim) if b and b is not p]
        if best:
            ax.plot(
                [n for n, _ in best],
                [b["ns_per_op"] for _, b in best],
                "s--",
                color=colour,
                alpha=0.6,
                label=f"{impl} (fastest variant)",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(f"{bench} (ns per {run.units.get(bench, 'op')})")
    ax.set_xlabel("N")
    ax.grid(True, which="both", alpha=0.3)


def plot_micro(run, plotdir, date):
    plt = pyplot()
    files = []
    for bench in run.benches:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        plot_micro_axes(ax, run, bench)
        ax.set_ylabel("ns per op (median, lower is better)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        name = f"micro-{bench}.{PLOT_EXT}"
        fig.savefig(os.path.join(plotdir, name), metadata={"Date": None})
        plt.close(fig)
        files.append(name)
    cols = 4 if len(run.benches) > 4 else len(run.benches)
    rows = (len(run.benches) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.9 * rows), squeeze=False)
    for ax, bench in zip(axes.flat, run.benches):
        plot_micro_axes(ax, run, bench)
    for ax in list(axes.flat)[len(run.benches):]:
        ax.axis("off")
    seen = {}
    for ax in axes.flat:
        for h, l in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(l, h)
    fig.legend(seen.values(), seen.keys(), loc="lower center", ncol=min(6, len(seen)), fontsize=8)
    fig.suptitle(f"ns per operation against N (log-log, lower is better), one run of {date}")
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    fig.savefig(os.path.join(plotdir, f"micro.{PLOT_EXT}"), metadata={"Date": None})
    plt.close(fig)
    return files


def scenario_label(l):
    return f"{l['conns']}×{l['pipeline']}"


def plot_load(run, plotdir, benches, name, title, unit, missing=()):
    """Grouped bars: replies per second and server CPU per reply, per scenario; `missing`
    names the implementations that were skipped."""
    rows = [l for b in benches for l in run.load.get(b, [])]
    if not rows:
        return None
    plt = pyplot()
    scenarios = []
    for l in rows:
        s = (l["bench"], l["conns"], l["pipeline"])
        if s not in scenarios:
            scenarios.append(s)
    impls = [i for i in run.impls if any(l["impl"] == i for l in rows)]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 1.3 * len(scenarios) + 2), 6.2))
    width = 0.8 / len(impls)
    for k, impl in enumerate(impls):
        xs, rate, cpu = [], [], []
        for i, s in enumerate(scenarios):
            l = next((l for l in rows if (l["bench"], l["conns"], l["pipeline"]) == s and l["impl"] == impl), None)
            if l:
                xs.append(i + (k - (len(impls) - 1) / 2) * width)
                rate.append(l.get("msgs_per_s") or 0)
                cpu.append(l.get("server_cpu_us_per_msg") or 0)
        top.bar(xs, rate, width, color=COLOURS.get(impl), label=impl)
        bottom.bar(xs, cpu, width, color=COLOURS.get(impl), label=impl)
    paths = {(l["bench"], l["conns"], l["pipeline"]): l.get("path") for l in rows}
    labels = [
        (f"GET {paths[s]}\n" if paths.get(s) else "") + f"{s[1]} conn{'s' if s[1] != 1 else ''} × {s[2]}"
        for s in scenarios
    ]
    for ax in (top, bottom):
        ax.set_xticks(range(len(scenarios)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    top.set_ylabel(f"{unit} per second\n(higher is better)")
    bottom.set_ylabel(f"server CPU µs per {unit[:-1] if unit.endswith('s') else unit}\n(lower is better)")
    bottom.set_yscale("log")
    top.legend(fontsize=8)
    top.set_title(title + "".join(f"\n{m}: not run (no server subcommand yet)" for m in missing))
    bottom.set_xlabel("connections × requests in flight on each (pipeline)")
    fig.tight_layout()
    fig.savefig(os.path.join(plotdir, name), metadata={"Date": None})
    plt.close(fig)
    return name


# ---------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------


def cmd_render(raw, report_path, plotdir):
    run = Run(read_lines(raw))
    info = run.info
    os.makedirs(plotdir, exist_ok=True)
    rel = os.path.relpath(plotdir, os.path.dirname(os.path.abspath(report_path)))
    date = info.get("date", "?")
    out = []
    w = out.append

    w(f"# weft, tokio and Twisted side by side — {date}")
    w("")
    w(
        "Written by `benches/compare/run.sh` (the guide: `benches/README.md`). Every number below comes "
        "from this one run on this one machine; ratios are taken only between implementations of this run."
    )
    w("")
    w("## Machine and versions")
    w("")
    w(
        f"- Machine: {info.get('cpus', '?')} CPUs ({info.get('cpu_model', '?')}), {info.get('mem', '?')} memory, "
        f"Linux {info.get('kernel', '?')}."
    )
    w(
        f"- Load average (1, 5, 15 min): {info.get('load_before', '?')} before, {info.get('load_after', '?')} after. "
        + (f"**Note:** {info['note'].rstrip('.')}." if info.get("note") else "")
    )
    w(
        f"- Versions: weft {info.get('weft', '?')} (commit {info.get('commit', '?')}, mio {info.get('weft_mio', '?')}), "
        f"{info.get('rustc', '?')}; tokio {info.get('tokio', '?')}, hyper {info.get('hyper', '?')}, "
        f"futures {info.get('futures', '?')}; CPython {info.get('python', '?')}, Twisted {info.get('twisted', '?')}."
    )
    w(
        f"- Settings: sizes N = {info.get('sizes', '?')}; {info.get('rounds', '?')} rounds of every micro-benchmark "
        f"(interleaved; a variant's number is its lowest round median); time budget per variant "
        f"{info.get('budget', 'default: 1 s Rust, 1.5 s Python')}; load runs {info.get('secs', '?')} s after "
        f"{info.get('warmup', '?')} s warm-up, {info.get('msg_size', '?')}-byte echo messages, loadgen "
        f"`{info.get('loadgen_flags', '')}`; pinning: {info.get('pinning', '?')}. "
        f"Wall time: {info.get('wall_s', '?')} s."
    )
    w("")

    if run.micro:
        render_micro(w, run, rel)
    render_load(w, run, rel, ["echo"], "TCP echo", f"echo.{PLOT_EXT}", "messages")
    http_benches = sorted(run.load.keys() - {"echo"}, key=lambda b: (b != "http", b))
    skipped = [e for e in run.errors if e.get("skipped")]
    if http_benches or skipped:
        render_load(w, run, rel, http_benches, "HTTP/1.1", f"http.{PLOT_EXT}", "requests", skipped)
    if run.micro:
        render_variants(w, run)
    if run.errors:
        w("## Errors and skipped parts")
        w("")
        for e in run.errors:
            w(f"- {e['impl']} {e['bench']} {e.get('n', '')}: {e['error']}")
        w("")
    w(f"The raw JSON lines of this run are in `{os.path.basename(raw)}`.")
    w("")

    if run.micro:
        plot_micro(run, plotdir, date)
    plot_load(run, plotdir, ["echo"], f"echo.{PLOT_EXT}", "TCP echo (loadgen, closed loop, loopback)", "messages")
    if http_benches:
        missing = [s["impl"] for s in skipped]
        title = "HTTP/1.1 GET (keep-alive, closed loop, loopback)"
        plot_load(run, plotdir, http_benches, f"http.{PLOT_EXT}", title, "requests", missing)
    with open(report_path, "w") as f:
        f.write("\n".join(out))


def render_micro(w, run, rel):
    w("## Callback chains, cancellation, fan-out and timers (ns per operation)")
    w("")
    w(f"![ns per operation against N, log-log]({rel}/micro.{PLOT_EXT})")
    w("")
    w(
        "One repetition is the whole scenario, from nothing to a checked result; ns/op = median repetition ÷ N "
        "(the lowest of the rounds' medians); *min* = the fastest repetition. *primary* = the variant closest to "
        "the Deferred scenario, *fastest* = the implementation's fastest variant (`benches/README.md` says what "
        "each does). “×” = how many times faster weft is (above 1: weft is faster). allocs/op = allocations "
        "(and reallocations) per operation, counted in a separate, untimed pass (`count-allocs` builds)."
    )
    w("")
    others = [i for i in run.impls if i != "weft"]
    header = ["bench", "N"]
    if "weft" in run.impls:
        header += ["weft", "weft allocs/op"]
    for o in others:
        header += [f"{o} primary"]
        if o == "tokio":
            header += ["tokio allocs/op", "tokio fastest"]
    if "weft" in run.impls:
        for o in others:
            header += [f"weft vs {o} primary"]
            if o == "tokio":
                header += ["weft vs tokio fastest"]
    rows = []
    for bench in run.benches:
        for n in run.sizes:
            row = [bench, f"{n:,}"]
            wp = run.primary("weft", bench, n)
            cell = lambda r: f"{ns(r['ns_per_op'])} <sub>min {ns(r.get('min_ns_per_op'))}</sub>" if r else "—"  # noqa: E731
            allocs = lambda impl, r: num(run.allocs_of(impl, bench, n, r["variant"]), 2) if r else "—"  # noqa: E731
            if "weft" in run.impls:
                row += [cell(wp), allocs("weft", wp)]
            for o in others:
                op = run.primary(o, bench, n)
                row += [cell(op)]
                if o == "tokio":
                    ob = run.best(o, bench, n)
                    row += [allocs("tokio", op), f"{cell(ob)} `{ob['variant']}`" if ob else "—"]
            if "weft" in run.impls:
                for o in others:
                    op = run.primary(o, bench, n)
                    row += [times(op and op["ns_per_op"], wp and wp["ns_per_op"])]
                    if o == "tokio":
                        ob = run.best(o, bench, n)
                        row += [times(ob and ob["ns_per_op"], wp and wp["ns_per_op"])]
            rows.append(row)
    table(w, header, rows, ["---", "---:"] + ["---:"] * (len(header) - 2))
    w("Per scenario: " + ", ".join(f"[{b}]({rel}/micro-{b}.{PLOT_EXT})" for b in run.benches) + ".")
    w("")


def render_load(w, run, rel, benches, title, plot, unit, skipped=()):
    rows = [l for b in benches for l in run.load.get(b, [])]
    scenarios = list(dict.fromkeys((l["bench"], l["conns"], l["pipeline"]) for l in rows))
    rows.sort(key=lambda l: (scenarios.index((l["bench"], l["conns"], l["pipeline"])), impl_key(l["impl"])))
    if not rows and not skipped:
        return
    w(f"## {title}")
    w("")
    if rows:
        w(f"![{title}: {unit} per second and server CPU per {unit[:-1]}]({rel}/{plot})")
        w("")
        w(
            f"Closed loop on loopback: each connection keeps `pipeline` {unit} in flight and sends the next as "
            f"soon as a reply is complete. Latency is from queueing a {unit[:-1]} to reading the last byte of its "
            f"reply. Server CPU = utime + stime of the server process over the measured window (`/proc`, 10 ms "
            f"ticks) ÷ replies: the fairest number here, as the load generator may be what limits the rate. "
            + (
                "`http` = GET /hello; `http-sleepN` = GET /sleep/N (the reply waits N ms on the server's timer)."
                if unit == "requests"
                else ""
            )
        )
        w("")
        header = ["bench", "server", "conns", "pipeline", f"{unit}/s", "p50 µs", "p99 µs", "max µs",
                  "server CPU %", f"server CPU µs/{unit[:-1]}", "loadgen CPU %", "errors"]
        table(
            w,
            header,
            [
                [
                    l["bench"] + (f" `{l['path']}`" if l.get("path") else ""),
                    l["impl"],
                    l["conns"],
                    l["pipeline"],
                    num(l.get("msgs_per_s")),
                    num(l.get("p50_us"), 1),
                    num(l.get("p99_us"), 1),
                    num(l.get("max_us"), 1),
                    num(l.get("server_cpu_pct"), 1),
                    num(l.get("server_cpu_us_per_msg"), 2),
                    num(l.get("loadgen_cpu_pct"), 1),
                    f"**{l['errors']}**" if l.get("errors") else "0",
                ]
                for l in rows
            ],
            ["---", "---"] + ["---:"] * (len(header) - 2),
        )
        if "weft" in {l["impl"] for l in rows}:
            others = [i for i in run.impls if i != "weft" and any(l["impl"] == i for l in rows)]
            scen = {}
            for l in rows:
                scen.setdefault((l["bench"], l["conns"], l["pipeline"]), {})[l["impl"]] = l
            header = ["bench", "conns", "pipeline"]
            header += [f"weft ÷ {o} ({unit}/s)" for o in others] + [f"{o} ÷ weft (CPU/{unit[:-1]})" for o in others]
            body = []
            for (b, c, p), by in scen.items():
                wl = by.get("weft")
                r = [b, c, p]
                for o in others:
                    r.append(times(wl and wl.get("msgs_per_s"), by.get(o, {}).get("msgs_per_s")) if wl and o in by else "—")
                for o in others:
                    ol = by.get(o)
                    r.append(times(ol and ol.get("server_cpu_us_per_msg"), wl and wl.get("server_cpu_us_per_msg")) if wl and ol else "—")
                body.append(r)
            w(f"Same-run ratios (above 1: weft is better):")
            w("")
            table(w, header, body)
    for s in skipped:
        w(f"- **{s['impl']}: no {title} rows** — {s['error']}")
    if skipped:
        w("")


def render_variants(w, run):
    w("## Every variant")
    w("")
    rows = []
    for bench in run.benches:
        for n in run.sizes:
            for impl in run.impls:
                for v, r in run.micro.get((impl, bench, n), {}).items():
                    if r.get("ns_per_op") is None:
                        rows.append([bench, f"{n:,}", impl, f"`{v}`", "skipped", "", "", "", "", r.get("skipped", "")])
                        continue
                    phases = ", ".join(f"{k} {ns(x)}" for k, x in (r.get("phases") or {}).items())
                    rows.append(
                        [
                            bench,
                            f"{n:,}",
                            impl,
                            f"`{v}`",
                            ns(r["ns_per_op"]),
                            ns(r.get("min_ns_per_op")),
                            " / ".join(ns(x) for x in r.get("round_medians", [])),
                            r.get("reps", ""),
                            num(run.allocs_of(impl, bench, n, v), 3),
                            phases,
                        ]
                    )
    table(
        w,
        ["bench", "N", "impl", "variant", "ns/op", "min", "round medians", "reps", "allocs/op", "phases (ns/op, informative)"],
        rows,
        ["---", "---:", "---", "---"] + ["---:"] * 5 + ["---"],
    )


def main(argv):
    if not argv:
        sys.exit(__doc__)
    cmd, args = argv[0], argv[1:]
    if cmd == "info" and args:
        cmd_info(args[0], args[1:])
    elif cmd == "finish" and len(args) == 1:
        cmd_finish(args[0])
    elif cmd == "add" and len(args) >= 2:
        cmd_add(args[0], args[1], args[2:])
    elif cmd == "error" and len(args) in (5, 6):
        cmd_error(*args[:5], skipped=len(args) == 6)
    elif cmd == "render" and len(args) == 3:
        cmd_render(*args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

#!/usr/bin/python3
"""make bench: overhead of the agent as ratios against a baseline run in the
same invocation (alternating runs, medians). Prints; never fails on numbers.

    scripts/bench.py [cpu] [malloc] [aggregator] [rss]

Environment:
    BUILD              build directory (default build; make passes its BUILD)
    BENCH_REPS         interleaved repetitions per variant (default 5)
    BENCH_AGENT        the agent to measure (default $BUILD/libpyroagent.so)
    BENCH_BEFORE       another libpyroagent.so measured in the same runs, for
                       before/after tables (its rows are marked "before")
    BENCH_RSS_SECONDS  length of the long runs of the memory bench (default 20)
"""
import gzip
import os
import pathlib
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
B = ROOT / os.environ.get("BUILD", "build")
AGENT = os.environ.get("BENCH_AGENT", str(B / "libpyroagent.so"))
BEFORE = os.environ.get("BENCH_BEFORE", "")
REPS = int(os.environ.get("BENCH_REPS", "5"))
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"

sys.path.insert(0, str(ROOT / "tests" / "receiver"))
import protowire  # noqa: E402  (stdlib-only pprof decoder of the test receiver)

TMP = None  # per-invocation scratch directory


def clean_env(extra=None):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYROSCOPE_", "PYROAGENT_", "LD_PRELOAD", "MALLOC_CONF"))}
    env.update(extra or {})
    return env


class Agent:
    """An agent variant: the environment of one run, with a fresh output
    directory so the run's own profiles can be read back."""

    def __init__(self, extra=None, lib=None):
        self.extra = dict(extra or {})
        self.lib = lib or AGENT

    def env(self):
        out = tempfile.mkdtemp(prefix="run-", dir=TMP)
        e = {"LD_PRELOAD": self.lib, "PYROAGENT_OUTPUT_DIR": out,
             "PYROSCOPE_LOG_LEVEL": "warn", "PYROSCOPE_UPLOAD_INTERVAL": "1m"}
        e.update(self.extra)
        return clean_env(e), out


def plain(extra=None):
    return lambda: (clean_env(extra), None)


def agent(extra=None, lib=None):
    return Agent(extra, lib).env


def variants_with_before(pairs):
    """pairs: [(name, extra env)] of agent variants; adds the BENCH_BEFORE
    agent's row after each."""
    out = []
    for name, extra in pairs:
        out.append((name, agent(extra)))
        if BEFORE:
            out.append((name + " [before]", agent(extra, BEFORE)))
    return out


# --- profiles written by a run --------------------------------------------------
def read_profiles(out, kind):
    """Every <kind> profile a run wrote, decoded, with string comments."""
    profs = []
    if not out or not os.path.isdir(out):
        return profs
    for f in sorted(os.listdir(out)):
        if f".{kind}." not in f or not f.endswith(".pb.gz"):
            continue
        with open(os.path.join(out, f), "rb") as fh:
            p = protowire.decode_profile(gzip.decompress(fh.read()))
        st = p["string_table"]
        p["comments"] = [st[i].decode() if isinstance(st[i], bytes) else st[i] for i in p["comment"]]
        p["types"] = [st[t["type"]].decode() if isinstance(st[t["type"]], bytes) else st[t["type"]]
                      for t in p["sample_type"]]
        profs.append(p)
    return profs


def totals(profs):
    """{sample type: sum over every profile} and the comments."""
    tot, comments = {}, []
    for p in profs:
        for s in p["sample"]:
            for name, v in zip(p["types"], s["value"]):
                tot[name] = tot.get(name, 0) + v
        comments += p["comments"]
    return tot, comments


def lost_in(comments):
    """Samples the agent reported lost, from the profile comments."""
    n = 0
    for c in comments:
        for part in c.replace("pyroagent: memory: ", "").replace("pyroagent: ", "").split(", "):
            words = part.split()
            if len(words) > 1 and words[0].isdigit() and ("lost" in part or "dropped" in part):
                n += int(words[0])
    return n


# --- running --------------------------------------------------------------------
def run_once(argv, make_env):
    """(numbers the program printed, child CPU seconds, output dir)."""
    env, out = make_env()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return [float(x) for x in text.split()], cpu, out


def compare(argv, variants, on_run=None, raw=None):
    """Runs every variant REPS times, interleaved. Returns {name: (median
    wall, median cpu)}; on_run(name, printed, cpu, outdir) sees every run;
    raw (a dict), if given, receives {name: ([walls], [cpus])} in run
    order, for differences between neighbouring runs."""
    res = {name: ([], []) for name, _ in variants}
    for _ in range(REPS):
        for name, make_env in variants:
            printed, cpu, out = run_once(argv, make_env)
            res[name][0].append(printed[0])
            res[name][1].append(cpu)
            if on_run:
                on_run(name, printed, cpu, out)
            if out:
                shutil.rmtree(out, ignore_errors=True)
    if raw is not None:
        raw.update(res)
    return {n: (statistics.median(w), statistics.median(c), min(w), min(c), w) for n, (w, c) in res.items()}


def table(title, results, base, notes=None):
    """Medians, the best run of each (on a shared machine the least
    disturbed run is the more repeatable figure), and the median of the
    ratios within each repetition (its runs are neighbours in time, so
    slow drifts of the machine cancel)."""
    print(f"\n## {title}")
    print(f"{'variant':40} {'wall s':>8} {'cpu s':>8} {'wall x':>7} {'cpu x':>7}"
          f" {'best wall x':>12} {'best cpu x':>11} {'paired wall x':>14}")
    bw, bc, bbw, bbc, bws = results[base]
    for name, (w, c, mw, mc, ws) in results.items():
        paired = statistics.median(x / y for x, y in zip(ws, bws))
        print(f"{name:40} {w:8.3f} {c:8.3f} {w / bw:7.3f} {c / bc:7.3f} {mw / bbw:12.3f} {mc / bbc:11.3f}"
              f" {paired:14.3f}")
    for n in notes or []:
        print(n)
    sys.stdout.flush()


def loadavg():
    return " ".join(open("/proc/loadavg").read().split()[:3])


# --- CPU ----------------------------------------------------------------------------
def fit(points):
    """Least squares line through [(x, y)]: (slope, intercept)."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0, my
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    return slope, my - slope * mx


def bench_cpu():
    """cpu_burn at two lengths, the agent at 100 Hz, 1 kHz and 10 kHz (the
    last only to measure the cost of a sample: it takes enough samples to
    stand out of the noise). The cost of a sample is the slope of the
    agent's extra CPU over the samples taken (counted in the profiles),
    between runs of one repetition (neighbours in time, so slow drifts of
    a shared machine cancel): the fixed cost of a run (loading, symbols,
    the final profile) is the intercept, apart."""
    lengths = {"short": "250", "long": "1000"}
    rates = (("agent 100 Hz", "10ms"), ("agent 1 kHz", "1ms"), ("agent 10 kHz (cost probe)", "100us"))
    agents = variants_with_before([(n, {"PYROSCOPE_PROFILING_INTERVAL": iv}) for n, iv in rates])
    samples = {}

    def count(key):
        def on_run(name, printed, cpu, out):
            tot, _ = totals(read_profiles(out, "cpu"))
            samples.setdefault((key, name), []).append(tot.get("samples", 0))
        return on_run

    res, raw = {}, {}
    for key, n in lengths.items():
        raw[key] = {}
        res[key] = compare([str(B / "bench" / "cpu_burn"), "1", n],
                           [("no agent", plain())] + agents, count(key), raw[key])
    notes = []
    for tag in ("", " [before]"):
        names = [n + tag for n, _ in rates]
        if names[0] not in res["long"]:
            continue
        per, fixed = [], []
        for key in lengths:
            cpus = raw[key]
            for i in range(REPS):
                pts = [(samples[(key, name)][i], cpus[name][1][i] - cpus["no agent"][1][i]) for name in names]
                slope, icpt = fit(pts)
                per.append(slope)
                fixed.append(icpt)
        q = statistics.quantiles(per, n=4) if len(per) >= 2 else [per[0]] * 3
        n1k = statistics.median(samples[("long", names[1])])
        notes.append(f"agent{tag}: {1e6 * statistics.median(per):.1f} us of process CPU per sample "
                     f"(quartiles {1e6 * q[0]:.1f}..{1e6 * q[2]:.1f}; handler, copy, unwind, aggregation), "
                     f"{1e3 * statistics.median(fixed):.0f} ms fixed per run (start, symbols, final profile); "
                     f"1 kHz long run: {n1k:.0f} samples")
    table("CPU-bound program, 1 thread, ~2.4 s (targets: 100 Hz <= 1.01x, 1 kHz <= 1.03x wall)",
          res["long"], "no agent", notes)


# --- malloc -------------------------------------------------------------------------
def bench_malloc():
    prog = [str(B / "bench" / "malloc_pairs"), "50"]
    variants = [
        ("glibc, no agent", plain()),
        ("glibc + bare passthrough interposer", plain({"LD_PRELOAD": str(B / "bench" / "passthrough.so")})),
    ]
    variants += variants_with_before([("glibc + agent (defaults)", {})])
    if os.path.exists(JEMALLOC):
        variants += [
            ("jemalloc", plain({"LD_PRELOAD": JEMALLOC})),
            ("jemalloc prof:true", plain({"LD_PRELOAD": JEMALLOC, "MALLOC_CONF": "prof:true"})),
        ]
    acc = {}

    def on_run(name, printed, cpu, out):
        if out is None:
            return
        tot, comments = totals(read_profiles(out, "memory"))
        a = acc.setdefault(name, {"bytes": [], "objs": [], "lost": []})
        a["bytes"].append(tot.get("alloc_space", 0) / printed[1])
        a["objs"].append(tot.get("alloc_objects", 0) / printed[2])
        a["lost"].append(lost_in(comments))

    r = compare(prog, variants, on_run)
    notes = []
    if "jemalloc" in r:
        jp = statistics.median(x / y for x, y in zip(r["jemalloc prof:true"][4], r["jemalloc"][4]))
        notes.append(f"jemalloc's own profiler: {r['jemalloc prof:true'][0] / r['jemalloc'][0]:.3f}x wall "
                     f"vs jemalloc ({jp:.3f}x paired; the agent's target: <= 1.15x vs glibc)")
    rate = 512 * 1024
    for name, a in acc.items():
        notes.append(f"{name}: alloc_space {statistics.median(a['bytes']):.3f}x of the bytes allocated, "
                     f"alloc_objects {statistics.median(a['objs']):.3f}x; samples lost per run "
                     f"{statistics.median(a['lost']):.0f} (max {max(a['lost'])})")
    notes.append(f"(2 x 50M blocks of 268 B on average: {2 * 50e6 * 268 / rate:.0f} samples expected per run "
                 "at the default 512 KiB)")
    table("malloc/free worst case: 2 threads x 50M small pairs", r, "glibc, no agent", notes)


# --- memory of the agent ---------------------------------------------------------
def rss_kib(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss(argv, make_env):
    env, out = make_env()
    p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    peak = last = 0
    while p.poll() is None:
        last = rss_kib(p.pid) or last
        peak = max(peak, last)
        time.sleep(0.2)
    if out:
        shutil.rmtree(out, ignore_errors=True)
    return peak, last


def bench_rss():
    secs = os.environ.get("BENCH_RSS_SECONDS", "20")
    runs = [
        (f"CPU, 262,144 possible stacks ({secs} s)", [str(B / "bench" / "many_stacks"), secs],
         {"PYROSCOPE_PROFILING_INTERVAL": "1ms", "PYROSCOPE_UPLOAD_INTERVAL": "1s"}),
        (f"allocations, 262,144 possible stacks, 65,536 live blocks ({secs} s)",
         [str(B / "programs" / "alloc_many_stacks"), secs],
         {"PYROSCOPE_PROFILING_INTERVAL": "1ms", "PYROSCOPE_UPLOAD_INTERVAL": "1s"}),
        ("malloc/free worst case, 2 threads x 300M pairs", [str(B / "bench" / "malloc_pairs"), "300"],
         {"PYROSCOPE_UPLOAD_INTERVAL": "1s"}),
    ]
    print("\n## Agent memory (peak RSS, agent at 1 kHz and default heap sampling, 1 s intervals)")
    for title, argv, extra in runs:
        if not os.path.exists(argv[0]):
            print(f"{title}: {argv[0]} not built; skipped")
            continue
        base, _ = peak_rss(argv, plain())
        rows = [("agent", agent(extra))] + ([("agent [before]", agent(extra, BEFORE))] if BEFORE else [])
        for name, mk in rows:
            peak, last = peak_rss(argv, mk)
            print(f"{title}: {name} peak {peak / 1024:6.1f} MiB (no agent {base / 1024:.1f} MiB): "
                  f"agent's share {(peak - base) / 1024:5.1f} MiB (target <= 16 MiB)")
        sys.stdout.flush()


# --- the aggregator ------------------------------------------------------------------
def bench_aggregator():
    data = os.path.join(TMP, "readings.csv")
    procs = {}
    try:
        starts = [("no agent", plain()), ("agent (defaults)", agent())]
        if BEFORE:
            starts.append(("agent (defaults) [before]", agent(None, BEFORE)))
        for name, mk in starts:
            env, _ = mk()
            p = subprocess.Popen([str(B / "aggregator"), "--port", "0", "--bind", "127.0.0.1",
                                  "--data-file", data], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True)
            line = p.stdout.readline()
            port = line.strip().rsplit(":", 1)[1]
            procs[name] = (p, f"http://127.0.0.1:{port}")
        url0 = procs["no agent"][1]
        urllib.request.urlopen(urllib.request.Request(
            url0 + "/smartMeters/randomSmartMeterValues?meterCount=1000000", method="POST")).read()
        times = {n: [] for n in procs}
        rounds = REPS * 6
        for _ in range(rounds):
            for name, (_, url) in procs.items():
                t = time.perf_counter()
                urllib.request.urlopen(url + "/smartMeters/sum").read()
                times[name].append(time.perf_counter() - t)
        print("\n## Aggregator: GET /smartMeters/sum over 1M readings, one request at a time, "
              f"{rounds} rounds over the servers in turn (target >= 0.98x throughput)")
        base = times["no agent"]
        for name, ts in times.items():
            # Per round: neighbours in time, so a shared machine's drift cancels.
            ratios = sorted(b / t for b, t in zip(base, ts))
            q = statistics.quantiles(ratios, n=4)
            print(f"{name:40} {1 / statistics.median(ts):8.2f} sums/s  throughput "
                  f"{statistics.median(ratios):6.3f}x (quartiles {q[0]:.3f}..{q[2]:.3f})")
    finally:
        for p, _ in procs.values():
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=10)


def main():
    global TMP
    TMP = tempfile.mkdtemp(prefix="pyroagent-bench-")
    try:
        print(f"# pyroagent benchmarks (medians of {REPS} interleaved runs; ratios vs the baseline)")
        print(f"# agent {AGENT}" + (f"; before: {BEFORE}" if BEFORE else ""))
        print(f"# {os.cpu_count()} CPUs; load average at start {loadavg()}")
        which = sys.argv[1:] or ["cpu", "malloc", "aggregator", "rss"]
        for w in which:
            globals()["bench_" + w]()
        print(f"\n# load average at the end {loadavg()}")
    finally:
        shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    main()

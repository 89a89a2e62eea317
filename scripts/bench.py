#!/usr/bin/python3
"""make bench: overhead of the agent as ratios against a baseline run in the
same invocation (alternating runs, medians). Prints; never fails on numbers."""
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
B = ROOT / "build"
AGENT = str(B / "libpyroagent.so")
REPS = int(os.environ.get("BENCH_REPS", "5"))
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


def clean_env(extra=None):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYROSCOPE_", "PYROAGENT_", "LD_PRELOAD", "MALLOC_CONF"))}
    env.update(extra or {})
    return env


def agent_env(tmp, extra=None):
    e = {"LD_PRELOAD": AGENT, "PYROAGENT_OUTPUT_DIR": tmp, "PYROSCOPE_LOG_LEVEL": "warn"}
    e.update(extra or {})
    return clean_env(e)


def run_once(argv, env):
    """(wall seconds as printed by the program, child CPU seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return float(out.split()[0]), cpu


def compare(argv, variants):
    """Runs every variant REPS times, interleaved; returns {name: (wall, cpu)} medians."""
    res = {name: ([], []) for name, _ in variants}
    for _ in range(REPS):
        for name, env in variants:
            w, c = run_once(argv, env)
            res[name][0].append(w)
            res[name][1].append(c)
    return {n: (statistics.median(w), statistics.median(c)) for n, (w, c) in res.items()}


def table(title, results, base, notes=None):
    print(f"\n## {title}")
    print(f"{'variant':34} {'wall s':>9} {'cpu s':>9} {'wall x':>8} {'cpu x':>8}")
    bw, bc = results[base]
    for name, (w, c) in results.items():
        print(f"{name:34} {w:9.3f} {c:9.3f} {w / bw:8.3f} {c / bc:8.3f}")
    for n in notes or []:
        print(n)


def bench_cpu(tmp):
    burn = [str(B / "bench" / "cpu_burn"), "1", "1000"]
    r = compare(burn, [
        ("no agent", clean_env()),
        ("agent 100 Hz", agent_env(tmp, {"PYROSCOPE_PROFILING_INTERVAL": "10ms"})),
        ("agent 1 kHz", agent_env(tmp, {"PYROSCOPE_PROFILING_INTERVAL": "1ms"})),
    ])
    base_cpu = r["no agent"][1]
    notes = []
    for name, hz in (("agent 100 Hz", 100), ("agent 1 kHz", 1000)):
        samples = base_cpu * hz
        extra = r[name][1] - base_cpu
        notes.append(f"{name}: ~{samples:.0f} samples, {1e6 * extra / samples:.1f} us of process CPU per sample"
                     " (handler + unwinding + encoding)")
    table("CPU-bound program, 1 thread (targets: 100 Hz <= 1.01x, 1 kHz <= 1.03x wall)", r, "no agent", notes)


def bench_malloc(tmp):
    prog = [str(B / "bench" / "malloc_pairs"), "50"]
    variants = [
        ("glibc, no agent", clean_env()),
        ("glibc + bare passthrough interposer", clean_env({"LD_PRELOAD": str(B / "bench" / "passthrough.so")})),
        ("glibc + agent (defaults)", agent_env(tmp)),
    ]
    if os.path.exists(JEMALLOC):
        variants += [
            ("jemalloc", clean_env({"LD_PRELOAD": JEMALLOC})),
            ("jemalloc prof:true", clean_env({"LD_PRELOAD": JEMALLOC, "MALLOC_CONF": "prof:true"})),
        ]
    r = compare(prog, variants)
    notes = []
    if "jemalloc" in r:
        notes.append(f"jemalloc's own profiler: {r['jemalloc prof:true'][0] / r['jemalloc'][0]:.3f}x wall "
                     "vs jemalloc (the agent's target: <= 1.15x vs glibc)")
    table("malloc/free worst case: 2 threads x 50M small pairs", r, "glibc, no agent", notes)


def rss_kib(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def bench_rss(tmp):
    secs = os.environ.get("BENCH_RSS_SECONDS", "20")
    out = {}
    for name, env in (("no agent", clean_env()),
                      ("agent 1 kHz, 1 s interval", agent_env(tmp, {
                          "PYROSCOPE_PROFILING_INTERVAL": "1ms", "PYROSCOPE_UPLOAD_INTERVAL": "1s"}))):
        p = subprocess.Popen([str(B / "bench" / "many_stacks"), secs], env=env,
                             stdout=subprocess.DEVNULL)
        peak = 0
        while p.poll() is None:
            peak = max(peak, rss_kib(p.pid))
            time.sleep(0.2)
        out[name] = peak
    print(f"\n## Agent memory with many distinct stacks ({secs} s, 262,144 possible stacks)")
    for name, kib in out.items():
        print(f"{name:34} peak RSS {kib / 1024:7.1f} MiB")
    print(f"agent's share: {(out['agent 1 kHz, 1 s interval'] - out['no agent']) / 1024:.1f} MiB")


def bench_aggregator(tmp):
    data = os.path.join(tmp, "readings.csv")
    procs = {}
    try:
        for name, env in (("no agent", clean_env()), ("agent (defaults)", agent_env(tmp))):
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
        for _ in range(REPS * 2):
            for name, (_, url) in procs.items():
                t = time.perf_counter()
                urllib.request.urlopen(url + "/smartMeters/sum").read()
                times[name].append(time.perf_counter() - t)
        print("\n## Aggregator: GET /smartMeters/sum over 1M readings (target >= 0.98x throughput)")
        base = statistics.median(times["no agent"])
        for name, ts in times.items():
            m = statistics.median(ts)
            print(f"{name:34} {1 / m:8.2f} sums/s  throughput {base / m:6.3f}x")
    finally:
        for p, _ in procs.values():
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=10)


def main():
    tmp = tempfile.mkdtemp(prefix="pyroagent-bench-")
    try:
        print(f"# pyroagent benchmarks (medians of {REPS} interleaved runs; ratios vs the baseline)")
        which = sys.argv[1:] or ["cpu", "malloc", "aggregator", "rss"]
        for w in which:
            globals()["bench_" + w](tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

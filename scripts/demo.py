#!/usr/bin/python3
"""make demo: the seed talk's incident replayed on the C aggregator under
pyroagent, with no server: profiles go to files, and the story is told from
them through Google's pprof.

Environment (make demo METERS=... passes them): METERS (large run, default
100,000,000), SMALL (default 1,000,000), CAP (the aggregator's --max-heap,
default 768m), DEMO_DIR (default out/demo), INTERVAL (default 2s)."""
import glob
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUILD = ROOT / "build"
METERS = int(os.environ.get("METERS") or 100_000_000)
SMALL = int(os.environ.get("SMALL") or 1_000_000)
CAP = os.environ.get("CAP") or "768m"
OUT = pathlib.Path(os.environ.get("DEMO_DIR") or ROOT / "out" / "demo")
INTERVAL = os.environ.get("INTERVAL") or "2s"
SERVICE = "smart-meter-aggregator"


def size_bytes(text):
    m = re.fullmatch(r"(\d+)([kmg]?)b?", text.strip().lower())
    if not m:
        sys.exit(f"demo: CAP={text!r} is not a size like 768m")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2)]


def say(text=""):
    print(text, flush=True)


def mib(kib):
    return f"{kib / 1024:,.0f} MiB"


class RssWatch:
    """Polls the server's resident memory while a request runs."""

    def __init__(self, pid):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                for line in open(f"/proc/{self.pid}/status"):
                    if line.startswith("VmRSS:"):
                        self.peak = max(self.peak, int(line.split()[1]))
            except OSError:
                return
            time.sleep(0.02)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def request(url, method="GET", timeout=3600):
    t = time.monotonic()
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, body = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read().decode()
    return status, body.strip(), time.monotonic() - t


def pprof(args, files):
    env = dict(os.environ, HOME=os.environ.get("HOME", "/tmp"), GOTOOLCHAIN="local")
    p = subprocess.run(["go", "tool", "pprof"] + args + [str(f) for f in files],
                       capture_output=True, text=True, env=env, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.strip())
    return p.stdout


def top_lines(files, index, n=8):
    out = pprof(["-top", f"-sample_index={index}", f"-nodecount={n}"], files)
    lines = out.splitlines()
    start = next((i for i, l in enumerate(lines) if l.strip().startswith("flat")), None)
    return lines[start:start + n + 1] if start is not None else lines[-n:]


def comments(path):
    return [l[len("Comment: "):] for l in pprof(["-raw"], [path]).splitlines()
            if l.startswith("Comment: ")]


def inuse_total(path):
    out = pprof(["-top", "-sample_index=inuse_space", "-nodecount=1"], [path])
    m = re.search(r"of ([0-9.]+)([kMGT]?B) total", out)
    if not m:
        return 0.0
    return float(m.group(1)) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[m.group(2)]


def main():
    cap = size_bytes(CAP)
    shutil.rmtree(OUT, ignore_errors=True)
    profiles = OUT / "profiles"
    profiles.mkdir(parents=True)
    data = OUT / "smartmeter-readings.csv"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYROSCOPE_", "PYROAGENT_", "LD_PRELOAD"))}
    env.update({
        "LD_PRELOAD": str(BUILD / "libpyroagent.so"),
        "PYROAGENT_OUTPUT_DIR": str(profiles),
        "PYROSCOPE_APPLICATION_NAME": SERVICE,
        "PYROSCOPE_UPLOAD_INTERVAL": INTERVAL,
        # The agent's view of the limit: the OOM guard sends the memory
        # profile out of cycle at 90% of it, before the request fails.
        "PYROAGENT_MEMORY_LIMIT": str(cap),
    })
    say(f"# pyroagent demo: the smart meter incident ({SMALL:,} then {METERS:,} readings, heap cap {CAP})")
    say(f"# aggregator under LD_PRELOAD={BUILD / 'libpyroagent.so'}, profiles in {profiles}")
    server = subprocess.Popen([str(BUILD / "aggregator"), "--port", "0", "--bind", "127.0.0.1",
                               "--data-file", str(data), "--max-heap", CAP],
                              env=env, stdout=subprocess.PIPE, stderr=open(OUT / "aggregator.log", "w"),
                              text=True)
    line = server.stdout.readline()
    if "listening on" not in line:
        server.kill()
        sys.exit(f"demo: the aggregator did not start; see {OUT / 'aggregator.log'}")
    base = line.strip().split("listening on ", 1)[1]
    peaks = {}
    try:
        for step, (meters, label) in enumerate(((SMALL, "small"), (METERS, "large")), start=1):
            status, body, secs = request(f"{base}/smartMeters/randomSmartMeterValues?meterCount={meters}",
                                         method="POST")
            say(f"\n== {2 * step - 1}. POST /smartMeters/randomSmartMeterValues?meterCount={meters}")
            say(f"   {status} {body} ({secs:.1f} s)")
            with RssWatch(server.pid) as w:
                status, body, secs = request(f"{base}/smartMeters/sum")
            peaks[label] = w.peak
            say(f"== {2 * step}. GET /smartMeters/sum ({label}: every reading loaded into memory first)")
            say(f"   {status} {body} ({secs:.1f} s, peak RSS {mib(w.peak)})")
            if label == "large":
                failed = status != 200
        health = request(f"{base}/health")
        say(f"   server still up: GET /health -> {health[0]} {health[1]}")
        with RssWatch(server.pid) as w:
            status, body, secs = request(f"{base}/smartMeters/sum?mode=streaming")
        peaks["streaming"] = w.peak
        say("== 5. GET /smartMeters/sum?mode=streaming (the fix: constant memory)")
        say(f"   {status} {body} ({secs:.1f} s, peak RSS {mib(w.peak)})")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        # The large CSV (about 13 bytes a reading) has served its purpose.
        data.unlink(missing_ok=True)

    cpu = sorted(glob.glob(str(profiles / f"{SERVICE}.*.cpu.*.pb.gz")))
    mem = sorted(glob.glob(str(profiles / f"{SERVICE}.*.memory.*.pb.gz")),
                 key=lambda p: int(p.rsplit(".", 3)[-3]))
    say("\n# What the profiles say")
    say(f"{len(cpu)} CPU and {len(mem)} memory profiles written.")
    if cpu:
        say("\n## Where the CPU went (all intervals merged, go tool pprof -top -sample_index=cpu)")
        for l in top_lines(cpu, "cpu"):
            say("   " + l)
    at_failure, why = None, ""
    for path in mem:
        if any("oom_guard" in c for c in comments(path)):
            at_failure, why = path, "the OOM guard's out-of-cycle profile"
    if at_failure is None and mem:
        at_failure = max(mem, key=inuse_total)
        why = "the memory profile with the most memory in use"
    if at_failure:
        say(f"\n## Who held the memory at the failure ({why}: {os.path.basename(at_failure)})")
        for l in top_lines([at_failure], "inuse_space"):
            say("   " + l)
    say("\n## Peak memory of the sum")
    say(f"   naive ({METERS:,} readings, failed={failed}): {mib(peaks.get('large', 0))}"
        f"   streaming: {mib(peaks.get('streaming', 0))}")
    pictures = []
    if cpu:
        pictures.append(("cpu", cpu, "CPU time of the smart meter aggregator"))
    if at_failure:
        pictures.append(("inuse_space", [at_failure], "Memory in use at the failure"))
    for index, files, title in pictures:
        svg = OUT / f"flamegraph-{'cpu' if index == 'cpu' else 'memory'}.svg"
        subprocess.run([sys.executable, str(ROOT / "scripts" / "flamegraph.py"), "--sample-index",
                        index, "--title", title, "-o", str(svg)] + files, check=True)
        say(f"   flame graph: {svg}")
    say("\nOpen them in a browser, or explore interactively with:")
    if at_failure:
        say(f"   go tool pprof -http=localhost:8081 -sample_index=inuse_space {at_failure}")
    say(f"   go tool pprof -http=localhost:8082 {profiles}/{SERVICE}.*.cpu.*.pb.gz")
    summary = {"failed_large_sum": failed, "peak_rss_kib": peaks, "cpu_profiles": len(cpu),
               "memory_profiles": len(mem), "failure_profile": at_failure}
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()

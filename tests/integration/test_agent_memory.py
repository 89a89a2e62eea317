"""Memory profiles end to end, read by `go tool pprof`: accuracy on programs
with known allocation sites, anonymous mappings tracked exactly, allocators
brought as shared libraries (either preload order), C++ new/delete, fork
and stress, delivery to Pyroscope, the aggregator's loader in inuse_space,
and the OOM guard's out-of-cycle profile."""
import json
import os
import pathlib
import re
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from agentrun import BUILD, ROOT, agent_env, pprof, run

sys.path.insert(0, str(ROOT / "tests" / "receiver"))

# A private build can be tested with PA_TEST_BUILD=build-<name>.
BUILD_DIR = pathlib.Path(os.environ.get("PA_TEST_BUILD", str(BUILD)))
if not BUILD_DIR.is_absolute():
    BUILD_DIR = ROOT / BUILD_DIR
AGENT_SO = BUILD_DIR / "libpyroagent.so"
PROGRAMS = BUILD_DIR / "programs"
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"

# Sampling statistics. A site allocating N blocks of n bytes at rate R is
# estimated with relative standard deviation sqrt((1 - p) / (p N)),
# p = 1 - e^(-n/R); for n << R that is sqrt(R / B), B the site's bytes.
# At R = 32 KiB the smallest checked quantity, 64 MiB of small blocks
# (site_tiny's and site_xthread's inuse, site_mixed's 64-byte blocks),
# has sd 2.2% (about 2,000 samples): +-10% is 4.5 sigma. 128 MiB (their
# alloc side) has sd 1.6% (6.4 sigma). site_aligned's 10,240 blocks of
# 8 KiB (p = 0.22): sd 1.9% (5.4 sigma). site_realloc's 896 blocks of
# 16 KiB..1 MiB: objects sd 1.9%, bytes far less. Blocks of 4 MiB and
# 1 MiB are always sampled at face value; mappings are exact.
RATE = 32768
TOLERANCE = 0.10


def mem_env(tmp_path, rate=RATE, extra=None, preload=None):
    env = agent_env({
        "PYROSCOPE_PROFILER_ALLOC": str(rate),
        "PYROSCOPE_UPLOAD_INTERVAL": "1s",
        "PYROSCOPE_LOG_LEVEL": "warn",
        **(extra or {}),
    }, output_dir=tmp_path)
    env["LD_PRELOAD"] = preload or str(AGENT_SO)
    return env


def memory_files(d):
    files = pathlib.Path(d).glob("*.memory.*.pb.gz")
    return sorted(files, key=lambda f: (f.name.split(".")[-4], int(f.name.split(".")[-3])))


def values(files, index):
    """{function: cumulative value} of `go tool pprof -top`, exact units."""
    unit = ["-unit=B"] if index.endswith("space") else []
    out = pprof(["-top", "-cum", "-nodecount=100000", "-nodefraction=0", "-edgefraction=0",
                 f"-sample_index={index}"] + unit, files)
    rows = {}
    for line in out.splitlines():
        m = re.match(r"^\s*(-?[0-9.]+)B?\s+\S+%\s+\S+%\s+(-?[0-9.]+)B?\s+\S+%\s+(.+?)\s*$", line)
        if m:
            rows[m.group(3)] = float(m.group(2))
    return rows


def comments(files):
    out = pprof(["-raw"], files)
    return [l[len("Comment: "):] for l in out.splitlines() if l.startswith("Comment: ")]


def measured(files):
    """alloc_* summed over every interval; inuse_* from the last one (a
    snapshot)."""
    return {
        "alloc_space": values(files, "alloc_space"),
        "alloc_objects": values(files, "alloc_objects"),
        "inuse_space": values(files[-1:], "inuse_space"),
        "inuse_objects": values(files[-1:], "inuse_objects"),
    }


def row(site):
    return "[anonymous mmap]" if site == "site_mmap" else site


def check_sites(truth, got, sites=None):
    errors = []
    for site, t in truth.items():
        if sites is not None and site not in sites:
            continue
        for kind in ("alloc_space", "alloc_objects", "inuse_space", "inuse_objects"):
            want = t[kind]
            have = got[kind].get(row(site), 0.0)
            if site == "site_mmap":
                ok = have == want  # exact, not sampled
            else:
                ok = abs(have - want) <= TOLERANCE * want
            if not ok:
                errors.append(f"{site} {kind}: {have:.0f} vs truth {want} "
                              f"({100 * (have / want - 1):+.1f}%)")
    assert not errors, "\n".join(errors)


def no_losses(files):
    lost = [c for c in comments(files) if "lost" in c or "not tracked" in c or "folded" in c]
    assert not lost, lost


def run_sites(tmp_path, preload=None):
    p = run([PROGRAMS / "alloc_sites", RATE], mem_env(tmp_path, preload=preload), timeout=180)
    files = memory_files(tmp_path)
    assert files, p.stderr
    return json.loads(p.stdout), files, p


def test_accuracy_known_sites(tmp_path):
    truth, files, _ = run_sites(tmp_path)
    assert len(files) >= 2, "several intervals, summed for alloc_*"
    no_losses(files)
    got = measured(files)
    check_sites(truth, got)
    # glibc maps site_large's 4 MiB blocks itself (not through the
    # interposed mmap): no anonymous mapping anywhere but site_mmap.
    mmap_stacks = [s for s in stacks(files, "alloc_space") if s[0] == "[anonymous mmap]"]
    assert mmap_stacks and all("site_mmap" in s for s in mmap_stacks), mmap_stacks


def stacks(files, index):
    """Stacks (leaf first) with a non-zero value for index."""
    out = pprof(["-traces", f"-sample_index={index}"], files)
    result, cur = [], []
    for line in out.splitlines():
        if line.startswith("-----"):
            if cur:
                result.append(cur)
            cur = []
            continue
        parts = line.split()
        if not parts or line.startswith(("File:", "Type:", "Time:", "Duration:", "Showing", "pyroagent")):
            continue
        if re.match(r"^[0-9.]+[a-zA-Z]*$", parts[0]) and len(parts) > 1:
            cur = [" ".join(parts[1:])]
        else:
            cur.append(" ".join(parts))
    if cur:
        result.append(cur)
    return result


@pytest.mark.skipif(not os.path.exists(JEMALLOC), reason="libjemalloc2 not installed")
def test_jemalloc_preloaded_after_agent(tmp_path):
    """The program keeps jemalloc (we forward to it), every allocation is
    seen once, and jemalloc's own mmap calls are not counted again."""
    truth, files, _ = run_sites(tmp_path, preload=f"{AGENT_SO} {JEMALLOC}")
    no_losses(files)
    # site_mmap's exact check is the double-count check: jemalloc maps
    # its own chunks (site_large's 4 MiB blocks among them).
    check_sites(truth, measured(files))


@pytest.mark.skipif(not os.path.exists(JEMALLOC), reason="libjemalloc2 not installed")
def test_jemalloc_preloaded_before_agent(tmp_path):
    """jemalloc first: the program's malloc never reaches us. The agent
    says so once, and still does not count jemalloc's mappings."""
    truth, files, p = run_sites(tmp_path, preload=f"{JEMALLOC} {AGENT_SO}")
    assert re.search(r"malloc comes from .*libjemalloc.* loaded before the agent", p.stderr), p.stderr
    got = measured(files)
    for site in ("site_tiny", "site_mixed", "site_large", "site_xthread"):
        assert got["alloc_space"].get(site, 0) == 0, site
    check_sites(truth, got, sites=["site_mmap"])


def test_static_allocator_detected(tmp_path):
    """An executable with its own malloc cannot be interposed: one line
    says so, and the program runs as it would."""
    p = run([PROGRAMS / "alloc_static"], mem_env(tmp_path), timeout=60)
    assert p.stdout.startswith("ok "), p.stdout
    lines = [l for l in p.stderr.splitlines() if "defines its own malloc" in l]
    assert len(lines) == 1 and "alloc_static" in lines[0], p.stderr


def test_non_pie_program_taking_mallocs_address_is_profiled(tmp_path):
    """A non-PIE executable that takes malloc's address (Debian's python3
    is one) has a canonical PLT entry for malloc: not an allocator of its
    own. No such warning, and its allocations are in the profile."""
    p = run([PROGRAMS / "alloc_nopie"], mem_env(tmp_path, rate=65536), timeout=60)
    assert p.stdout == "ok\n"
    assert "own malloc" not in p.stderr and "loaded before" not in p.stderr, p.stderr
    got = values(memory_files(tmp_path), "alloc_space")
    # 1024 blocks of 64 KiB: 64 MiB, each block about one sampling period.
    assert abs(got.get("main", 0) - (64 << 20)) <= TOLERANCE * (64 << 20), got.get("main")


def test_cxx_new_delete(tmp_path):
    # 1M objects of 64 B at 16 KiB: alloc 64 MiB (sd 1.6%), inuse 32 MiB
    # (sd 2.2%): +-10% is 4.5 sigma. The arrays are 1 MiB: exact.
    p = run([PROGRAMS / "alloc_cxx"], mem_env(tmp_path, rate=16384), timeout=120)
    truth = json.loads(p.stdout)
    files = memory_files(tmp_path)
    no_losses(files)
    got = measured(files)
    for site, t in truth.items():
        for kind, want in t.items():
            name = next((n for n in got[kind] if n.startswith(site)), None)
            assert name, (site, kind, sorted(got[kind]))
            have = got[kind][name]
            assert abs(have - want) <= TOLERANCE * want, (site, kind, have, want)
    # operator new is what called malloc: its frame is in the stacks.
    assert any(n.startswith("operator new") for n in got["alloc_space"]), sorted(got["alloc_space"])


def test_stress_and_fork_output_unchanged(tmp_path):
    """Threads trading blocks, realloc chains, mappings, and forks in the
    middle of it all: same output, no crash, no hang. A child that lives
    long enough profiles itself (issue 5) but never re-sends the parent's
    samples, and still frees inherited sampled blocks."""
    prog = PROGRAMS / "alloc_stress"
    plain = run([prog, 60000, 8], agent_env(preload=False), timeout=120)
    env = mem_env(tmp_path, rate=65536)
    profiled = run([prog, 60000, 8], env, timeout=120)
    assert profiled.stdout == plain.stdout
    assert "children ok: 8 of 8" in profiled.stdout
    assert "corrupt blocks: 0" in profiled.stdout
    pids = {int(f.name.split(".")[1]) for f in pathlib.Path(tmp_path).glob("*.pb.gz")}
    parent = min(pids)  # forked children get higher pids (no wrap in a test)
    for child in pids - {parent}:
        theirs = sorted(pathlib.Path(tmp_path).glob(f"*.{child}.memory.*.pb.gz"))
        if theirs:  # only the child's own work: no worker thread runs there
            assert values(theirs, "alloc_space").get("worker", 0) == 0, child
    files = [f for f in memory_files(tmp_path) if f.name.split(".")[1] == str(parent)]
    assert files
    got = values(files, "alloc_space")
    assert got.get("worker", 0) > 0
    # Everything is freed at the end: what is still in use is small
    # (mappings whose unmap event was lost to a full buffer are counted in
    # the comment and may linger).
    inuse = values(files[-1:], "inuse_space")
    lost_unmaps = sum(int(m.group(1)) for c in comments(files[-1:])
                      for m in [re.search(r"(\d+) munmap/mremap events lost", c)] if m)
    assert inuse.get("worker", 0) <= 12 * 4096 * max(lost_unmaps, 1) + (1 << 20), inuse


def test_memory_pushed_to_pyroscope(tmp_path):
    from receiver import Receiver
    rec = Receiver()
    rec.start(tmp_path / "rec")
    try:
        env = mem_env(tmp_path / "files", extra={"PYROSCOPE_SERVER_ADDRESS": rec.url,
                                                  "PYROSCOPE_APPLICATION_NAME": "mem-test"})
        run([PROGRAMS / "alloc_cxx"], env, timeout=120)
        mem = [(labels, path) for labels, name, path in rec.profiles() if name == "memory"]
        assert mem, rec.requests()
        for labels, _ in mem:
            assert labels["service_name"] == "mem-test"
            assert "pyroagent_trigger" not in labels
        reqs = [r for r in rec.requests() if r.get("profiles") and
                any(l["name"] == "__name__" and l["value"] == "memory"
                    for l in r["series"][0])]
        assert reqs and all(r["status"] == 200 for r in reqs), reqs
        prof = reqs[0]["profiles"][0]
        assert prof["sample_types"] == ["alloc_objects/count", "alloc_space/bytes",
                                        "inuse_objects/count", "inuse_space/bytes"], prof
        assert prof["period_type"] == "space/bytes" and prof["period"] == RATE, prof
        rows = values([path for _, path in mem], "alloc_space")
        assert any(n.startswith("meter::load_objects") for n in rows), sorted(rows)
    finally:
        rec.stop()


# ---- the aggregator ------------------------------------------------------------


class Aggregator:
    def __init__(self, tmp_path, env, args=()):
        self.data = tmp_path / "readings.csv"
        self.err_path = tmp_path / "aggregator.stderr"
        argv = [str(BUILD_DIR / "aggregator"), "--port", "0", "--bind", "127.0.0.1",
                "--data-file", str(self.data), *args]
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, env=env)
        ready, _, _ = select.select([self.proc.stdout], [], [], 15)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("listening on http://"):
            self.proc.kill()
            raise AssertionError(f"no listening line: {line!r}\n{self.stderr()}")
        self.url = line.strip().split(" ", 2)[2]

    def call(self, method, path, timeout=120):
        req = urllib.request.Request(self.url + path, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stderr(self):
        return self.err_path.read_text(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        return self.proc.returncode


@pytest.fixture
def aggregator():
    started = []

    def _start(*a, **kw):
        s = Aggregator(*a, **kw)
        started.append(s)
        return s
    yield _start
    for s in started:
        s.stop()


def test_aggregator_inuse_follows_the_sum(tmp_path, aggregator):
    """During a large naive sum inuse_space points at the reading loader;
    once the request is over it falls back."""
    out = tmp_path / "profiles"
    env = mem_env(out, extra={"PYROSCOPE_UPLOAD_INTERVAL": "300ms"})
    srv = aggregator(tmp_path, env)
    assert srv.call("POST", "/smartMeters/randomSmartMeterValues?meterCount=4000000")[0] == 200
    status, body = srv.call("GET", "/smartMeters/sum")
    assert status == 200, body
    time.sleep(1.0)  # a few quiet intervals
    assert srv.stop() == 0, srv.stderr()
    files = memory_files(out)
    series = [(f, values([f], "inuse_space")) for f in files]
    peak_file, peak = max(series, key=lambda fv: fv[1].get("load_readings", 0))
    loader = peak.get("load_readings", 0)
    # 4M readings of 32 B requested each (122 MiB) plus the pointer array:
    # at the peak most of that is live and it is the loader's.
    assert loader >= 64 << 20, (peak_file.name, sorted(peak.items(), key=lambda kv: -kv[1])[:8])
    total = max(peak.values())
    assert loader >= 0.8 * total, sorted(peak.items(), key=lambda kv: -kv[1])[:8]
    # Profiles keep coming after the request (empty ones say "nothing
    # live"), and the last one has the loader's memory gone.
    assert series.index((peak_file, peak)) < len(series) - 2, [f.name for f in files]
    last = series[-1][1].get("load_readings", 0)
    assert last <= 0.05 * loader, (last, loader)


def test_oom_guard_profile_names_the_loader(tmp_path, aggregator):
    """With a memory limit the aggregator's own cap would never reach, the
    guard fires first: one log line, and at once a memory profile labelled
    pyroagent_trigger=oom_guard whose inuse_space names load_readings."""
    from receiver import Receiver
    rec = Receiver()
    rec.start(tmp_path / "rec")
    try:
        out = tmp_path / "profiles"
        env = mem_env(out, extra={
            "PYROSCOPE_SERVER_ADDRESS": rec.url,
            "PYROSCOPE_UPLOAD_INTERVAL": "10s",
            "PYROSCOPE_LOG_LEVEL": "info",
            # Fires at 60% of 256 MiB of resident memory, while the
            # aggregator's 256 MiB heap cap is far away.
            "PYROAGENT_MEMORY_LIMIT": "256m",
            "PYROAGENT_OOM_GUARD": "60",
        })
        srv = aggregator(tmp_path, env, args=("--max-heap", "256m"))
        # The guard looks up limits at its first check 1 s after start
        # (README, "When it fires"); a fast machine loads and fails within
        # that second.
        time.sleep(1.5)
        assert srv.call("POST", "/smartMeters/randomSmartMeterValues?meterCount=10000000")[0] == 200
        status, body = srv.call("GET", "/smartMeters/sum")
        assert status == 500 and "out of memory" in body, body
        deadline = time.time() + 10
        oom = []
        while time.time() < deadline and not oom:
            oom = [(labels, path) for labels, name, path in rec.profiles()
                   if name == "memory" and labels.get("pyroagent_trigger") == "oom_guard"]
            time.sleep(0.2)
        log = srv.stderr()
        assert srv.stop() == 0, log
        fired = [l for l in log.splitlines() if "OOM guard" in l]
        assert len(fired) == 1, log
        assert "of the limit" in fired[0] and "PYROAGENT_MEMORY_LIMIT" in fired[0], fired
        assert len(oom) == 1, rec.profiles()
        rows = values([oom[0][1]], "inuse_space")
        assert rows.get("load_readings", 0) >= 0.5 * max(rows.values()), \
            sorted(rows.items(), key=lambda kv: -kv[1])[:8]
        assert any("oom_guard" in c for c in comments([oom[0][1]]))
        # The file sink got it too, under the normal name and next seq.
        files = memory_files(out)
        assert any(any("oom_guard" in c for c in comments([f])) for f in files), files
        seqs = [int(f.name.split(".")[-3]) for f in files]
        assert seqs == list(range(1, len(seqs) + 1)), seqs
    finally:
        rec.stop()


TAIL_CHECK = r"""
import ctypes, os, struct, sys
agent = ctypes.CDLL(sys.argv[1])       # the agent's own definitions
nxt = ctypes.CDLL(sys.argv[2])         # the next definition
addr = lambda f: ctypes.cast(f, ctypes.c_void_p).value
def tail(fn):
    # malloc and free end in a jmp rel32 whose displacement is aligned.
    a = addr(fn)
    b = ctypes.string_at(a, 64)
    for i in range(len(b) - 5):
        if b[i] == 0xE9 and (a + i + 1) % 4 == 0:
            return a + i + 5 + struct.unpack("<i", b[i + 1:i + 5])[0]
agent.malloc.restype = ctypes.c_void_p
agent.free(ctypes.c_void_p(agent.malloc(1000)))
print(tail(agent.malloc) == addr(getattr(nxt, sys.argv[3])),
      tail(agent.free) == addr(getattr(nxt, sys.argv[4])))
"""


@pytest.mark.parametrize("allocator", ["glibc", "jemalloc"])
def test_malloc_and_free_jump_straight_to_the_next_definition(tmp_path, allocator):
    """Once resolved, the malloc and free hooks end in a direct jump to the
    next definition (glibc's, or an allocator preloaded after the agent),
    not in a jump through a pointer: measured, that indirect jump was most
    of what interposing cost."""
    preload = str(AGENT_SO)
    nxt, names = "libc.so.6", ("__libc_malloc", "__libc_free")
    if allocator == "jemalloc":
        if not os.path.exists(JEMALLOC):
            pytest.skip("no libjemalloc")
        preload += ":" + JEMALLOC
        nxt, names = JEMALLOC, ("malloc", "free")
    env = mem_env(tmp_path, preload=preload)
    script = tmp_path / "tail.py"
    script.write_text(TAIL_CHECK)
    out = run(["/usr/bin/python3", script, AGENT_SO, nxt, *names], env).stdout
    assert out.split() == ["True", "True"], out

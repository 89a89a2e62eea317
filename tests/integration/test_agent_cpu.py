"""CPU profiles from any process: attribution, totals, names, delivery."""
import json
import re
import subprocess
import sys

import pytest

from agentrun import (AGENT, BUILD, ROOT, agent_env, function_names, pprof, profile_files, run,
                      top, traces)

sys.path.insert(0, str(ROOT / "tests" / "receiver"))


def cpu_env(tmp_path, hz, extra=None):
    env = {
        "PYROSCOPE_PROFILING_INTERVAL": f"{1000 // hz}ms",
        "PYROSCOPE_UPLOAD_INTERVAL": "1s",
        "PYROSCOPE_PROFILER_ALLOC": "0",
    }
    env.update(extra or {})
    return agent_env(env, output_dir=tmp_path)


@pytest.mark.parametrize("threads,hz", [(1, 100), (4, 100), (1, 1000), (4, 1000)])
def test_cpu_split_and_total(tmp_path, threads, hz):
    seconds = 3.0 if threads == 1 else 1.5
    p = run([BUILD / "programs" / "cpu_split", threads, seconds], cpu_env(tmp_path, hz))
    cpu_seconds = json.loads(p.stdout)["cpu_seconds"]
    files = profile_files(tmp_path, "cpu")
    assert files, p.stderr
    total, rows = top(files, "cpu")
    seventy = rows["spin_seventy"][1]
    thirty = rows["spin_thirty"][1]
    share = 100.0 * seventy / (seventy + thirty)
    assert 67.0 <= share <= 73.0, f"spin_seventy share {share:.1f}% ({rows})"
    assert abs(total - cpu_seconds) <= 0.05 * cpu_seconds, \
        f"profile total {total:.3f}s vs getrusage {cpu_seconds:.3f}s"


def test_files_named_and_numbered(tmp_path):
    p = run([BUILD / "programs" / "cpu_split", 1, 2.5], cpu_env(tmp_path, 100))
    files = profile_files(tmp_path, "cpu")
    names = [f.name for f in files]
    pids = {n.split(".")[1] for n in names}
    assert len(pids) == 1
    seqs = sorted(int(re.match(r"cpu_split\.\d+\.cpu\.(\d+)\.pb\.gz$", n).group(1)) for n in names)
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 2, names
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o600


def test_stacks_reach_thread_roots_and_libc(tmp_path):
    run([BUILD / "programs" / "cpu_split", 2, 1.0], cpu_env(tmp_path, 1000))
    stacks = traces(profile_files(tmp_path, "cpu"), "cpu")
    spin = [s for s in stacks if "spin_units" in s]
    assert spin, stacks[:5]
    # Unwinding goes through the program into libc's thread and main roots.
    roots = {s[-1] for s in spin}
    assert roots & {"start_thread", "clone3", "__clone3", "__clone"}, roots
    assert roots & {"_start", "__libc_start_main", "__libc_start_call_main", "main"}, roots
    full = [s for s in spin if s[0] == "spin_units" and s[1] in ("spin_seventy", "spin_thirty")]
    assert len(full) >= 0.9 * len(spin)


def test_cxx_names_demangled(tmp_path):
    run([BUILD / "programs" / "cxx_names", 1.5], cpu_env(tmp_path, 1000))
    names = function_names(profile_files(tmp_path, "cpu"))
    # demangled in full, and the compiler's .isra clones named as the function
    assert "meter::Reader::parse_readings(int)" in names, names
    assert "meter::Accumulator<long>::add_all(std::vector<long, std::allocator<long> > const&)" \
        in names, names


def test_stress_output_unchanged(tmp_path):
    prog = BUILD / "programs" / "stress"
    plain = run([prog, 3], agent_env(preload=False), timeout=120)
    profiled = run([prog, 3], cpu_env(tmp_path, 1000), timeout=120)
    assert profiled.stdout == plain.stdout
    files = profile_files(tmp_path, "cpu")
    assert files
    # Samples taken inside libc's malloc called through the agent's hook
    # show the host calling malloc: no frame of the agent, anywhere in a
    # stack, so no location maps into libpyroagent.so.
    names = function_names(files)
    assert "malloc" in names or "free" in names, names
    mappings = pprof(["-raw"], files).split("Mappings", 1)[1]
    assert "libpyroagent" not in mappings, mappings


def test_only_intended_exports():
    out = subprocess.run(["nm", "-D", "--defined-only", str(AGENT)], capture_output=True,
                         text=True, check=True).stdout
    names = {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}
    allowed = set(re.findall(r"\b([a-z_0-9]+);", (ROOT / "agent" / "agent.map").read_text()))
    assert names <= allowed, names - allowed
    assert {"pthread_create", "malloc", "free"} <= names


def test_no_global_dynamic_tls():
    out = subprocess.run(["readelf", "-rW", str(AGENT)], capture_output=True, text=True,
                         check=True).stdout
    assert "DTPMOD64" not in out and "TLSDESC" not in out, \
        [l for l in out.splitlines() if "DTP" in l or "TLSDESC" in l]


def test_push_reaches_receiver_with_labels_and_auth(tmp_path):
    from receiver import Receiver
    rec = Receiver()
    rec.start(tmp_path / "rec")
    try:
        env = agent_env({
            "PYROSCOPE_SERVER_ADDRESS": rec.url,
            "PYROSCOPE_APPLICATION_NAME": "split-test",
            "PYROSCOPE_LABELS": "env=ci,region=local",
            "PYROSCOPE_UPLOAD_INTERVAL": "1s",
            "PYROSCOPE_BASIC_AUTH_USER": "alice",
            "PYROSCOPE_BASIC_AUTH_PASSWORD": "s3cret-pass",
            "PYROSCOPE_TENANT_ID": "team-a",
            "PYROSCOPE_HTTP_HEADERS": '{"X-Extra": "yes"}',
            "PYROSCOPE_PROFILER_ALLOC": "0",
        })
        p = run([BUILD / "programs" / "cpu_split", 1, 2.5], env)
        assert "s3cret-pass" not in p.stderr
        reqs = [r for r in rec.requests() if r["path"].startswith("/push.v1")]
        assert len(reqs) >= 2
        for r in reqs:
            assert r["status"] == 200, r
            labels = {l["name"]: l["value"] for l in r["series"][0]["labels"]} \
                if isinstance(r["series"][0], dict) and "labels" in r["series"][0] \
                else {l["name"]: l["value"] for l in r["series"][0]}
            assert labels["__name__"] == "process_cpu"
            assert labels["service_name"] == "split-test"
            assert labels["env"] == "ci" and labels["region"] == "local"
            assert labels["__delta__"] == "false"
            headers = {k.lower(): v for k, v in r["headers"].items()}
            assert headers["authorization"] == "Basic <redacted>"
            assert headers["x-scope-orgid"] == "team-a"
            assert headers["x-extra"] == "yes"
            assert headers["user-agent"].startswith("pyroagent/")
        profs = rec.profiles()
        assert profs
        total, rows = top([path for _, _, path in profs], "cpu")
        assert "spin_seventy" in rows
    finally:
        rec.stop()
    assert "s3cret-pass" not in (tmp_path / "rec" / "requests.jsonl").read_text()


BAD_ENV = [
    ("PYROSCOPE_UPLOAD_INTERVAL", "abc"),
    ("PYROSCOPE_UPLOAD_INTERVAL", "-5s"),
    ("PYROSCOPE_UPLOAD_INTERVAL", "99999999999999999999s"),
    ("PYROSCOPE_UPLOAD_INTERVAL", "10 parsecs"),
    ("PYROSCOPE_PROFILING_INTERVAL", "0"),
    ("PYROSCOPE_PROFILING_INTERVAL", "1ns"),
    ("PYROSCOPE_PROFILING_INTERVAL", "1e3"),
    ("PYROSCOPE_PROFILER_EVENT", "wall-clock"),
    ("PYROSCOPE_PROFILER_ALLOC", "lots"),
    ("PYROSCOPE_PROFILER_ALLOC", "-1k"),
    ("PYROSCOPE_ALLOC_LIVE", "maybe"),
    ("PYROSCOPE_LOG_LEVEL", "verbose"),
    ("PYROSCOPE_LABELS", "novalue,=x,__name__=y,bad-name=z"),
    ("PYROSCOPE_LABELS", "k=" + "v" * 5000),
    ("PYROSCOPE_HTTP_HEADERS", "{not json"),
    ("PYROSCOPE_HTTP_HEADERS", '{"Bad Header": "x"}'),
    ("PYROSCOPE_SERVER_ADDRESS", "ftp://example"),
    ("PYROSCOPE_SERVER_ADDRESS", "://"),
    ("PYROSCOPE_APPLICATION_NAME", b"\xff\xfe"),
    ("PYROAGENT_OUTPUT_DIR", "/proc/definitely/not/here"),
    ("PYROAGENT_DISABLE", "perhaps"),
    ("PYROAGENT_EXIT_TIMEOUT", "forever"),
    ("PYROAGENT_OOM_GUARD", "150"),
    ("PYROAGENT_OOM_GUARD", "-5"),
    ("PYROSCOPE_SERVER_ADDRESS", "pyroscope:4040"),
    ("PYROSCOPE_SERVER_ADDRESS", "http://alice:topsecret@example:4040"),
    ("PYROSCOPE_SERVER_ADDRESS", "http://exa mple:4040"),
    ("PYROSCOPE_UPLOAD_INTERVAL", "10ms"),
    ("PYROSCOPE_UPLOAD_INTERVAL", "1.5.5s"),
    ("PYROSCOPE_PROFILER_ALLOC", "99999999999999999999"),
    ("PYROSCOPE_PROFILER_ALLOC", "4 parsecs"),
    ("PYROSCOPE_LABELS", "a=1,a=2"),
    ("PYROSCOPE_LABELS", "service_name=other"),
    ("PYROSCOPE_LABELS", ",".join(f"k{i}=v" for i in range(40))),
    ("PYROSCOPE_LABELS", "k=\x01"),
    ("PYROSCOPE_BASIC_AUTH_USER", "only-a-user"),
    ("PYROSCOPE_AUTH_TOKEN", "Bearer abc.def"),
    ("PYROSCOPE_TENANT_ID", "team\x01a"),
    ("PYROSCOPE_HTTP_HEADERS", '{"Content-Type": "text/plain"}'),
    ("PYROSCOPE_HTTP_HEADERS", '{"X-A": "1\\r\\nX-B: 2"}'),
    ("PYROSCOPE_HTTP_HEADERS", '["not", "an", "object"]'),
    ("PYROAGENT_SPOOL_MAX", "1k"),
    ("PYROAGENT_SPOOL_MAX_AGE", "2h"),
    ("PYROAGENT_MEMORY_LIMIT", "-1"),
    ("PYROAGENT_TLS_INSECURE", "2"),
    ("PYROAGENT_EXIT_TIMEOUT", "-1s"),
]
SECRETS = ("topsecret", "abc.def")


@pytest.mark.parametrize("name,value", BAD_ENV)
def test_bad_env_never_changes_the_host(tmp_path, name, value):
    script = "echo out; echo err >&2; exit 3"
    plain = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    base = {"PYROAGENT_OUTPUT_DIR": str(tmp_path), "PYROAGENT_EXIT_TIMEOUT": "300ms",
            "PYROSCOPE_LOG_LEVEL": "warn"}
    base[name] = value
    env = agent_env(base)
    # bytes, so that invalid UTF-8 reaches the agent as it is
    env = {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in env.items()}
    p = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env,
                       timeout=30, errors="replace")
    assert p.returncode == 3
    assert p.stdout == plain.stdout
    agent_lines = [l for l in p.stderr.splitlines() if l.startswith("pyroagent[")]
    assert any(name in l for l in agent_lines), p.stderr
    assert "err" in p.stderr.splitlines()
    for secret in SECRETS:
        assert secret not in p.stderr, p.stderr


def test_aggregator_under_load_shows_its_handlers(tmp_path):
    """The demo workload under the agent: its request handlers and the sum's
    loader carry the CPU, named, below libmicrohttpd's threads."""
    import urllib.request
    env = cpu_env(tmp_path, 1000)
    server = subprocess.Popen([str(BUILD / "aggregator"), "--port", "0", "--bind", "127.0.0.1",
                               "--data-file", str(tmp_path / "readings.csv")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        assert "listening on" in line, server.stderr.read()
        base = line.strip().split("listening on ", 1)[1]
        urllib.request.urlopen(urllib.request.Request(
            base + "/smartMeters/randomSmartMeterValues?meterCount=500000&seed=7",
            method="POST"), timeout=60).read()
        for _ in range(4):
            urllib.request.urlopen(base + "/smartMeters/sum", timeout=60).read()
            urllib.request.urlopen(base + "/smartMeters/sum?mode=streaming", timeout=60).read()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert server.returncode == 0
    files = profile_files(tmp_path, "cpu")
    total, rows = top(files, "cpu")
    for fn in ("handle_sum", "meters_sum_naive", "load_readings", "meters_generate"):
        assert fn in rows and rows[fn][1] > 0, (fn, sorted(rows))
    stacks = traces(files, "cpu")
    sums = [s for s in stacks if "load_readings" in s]
    assert sums and all("start_thread" in s for s in sums), sums[:3]

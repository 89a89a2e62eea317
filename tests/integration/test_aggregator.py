"""The smart meter aggregator (target/), black-box over HTTP: endpoints,
error paths, the heap cap, concurrency and shutdown."""
import hashlib
import http.client
import json
import os
import pathlib
import re
import resource
import select
import signal
import subprocess
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
# AGGREGATOR_BIN lets a helper test a private build; make uses build/.
BIN = os.environ.get("AGGREGATOR_BIN", str(ROOT / "build" / "aggregator"))

def sanitized():
    """True for an ASan build, whose allocator and address space differ."""
    return b"__asan_init" in pathlib.Path(BIN).read_bytes()


LINE_RE = re.compile(rb"^([0-9]+),([0-9]+)\.([0-9]{3})$")
SUM_RE = re.compile(r"^[0-9]+\.[0-9]{3}$")


def clean_env(extra=None):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AGGREGATOR_", "PYROSCOPE_", "PYROAGENT_", "LD_PRELOAD"))}
    env.update(extra or {})
    return env


class Server:
    """One aggregator process on a free loopback port."""

    def __init__(self, tmp_path, args=(), env=None, data_file=None, preexec_fn=None):
        self.data_file = pathlib.Path(data_file or tmp_path / "data" / "readings.csv")
        self.stderr_path = tmp_path / f"aggregator-{time.monotonic_ns()}.stderr"
        argv = [BIN, "--port", "0", "--bind", "127.0.0.1", "--data-file", str(self.data_file), *args]
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err,
                                         env=clean_env(env), preexec_fn=preexec_fn)
        ready, _, _ = select.select([self.proc.stdout], [], [], 10)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("listening on http://127.0.0.1:"):
            self.kill()
            raise AssertionError(f"no listening line: {line!r}\n{self.stderr()}")
        self.port = int(line.strip().rsplit(":", 1)[1])

    def request(self, method, path, timeout=60):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode()
        finally:
            conn.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def generate(self, n, seed=None):
        q = f"/smartMeters/randomSmartMeterValues?meterCount={n}"
        if seed is not None:
            q += f"&seed={seed}"
        status, headers, body = self.post(q)
        assert (status, body) == (200, f"CSV file generated with {n} readings."), body
        assert headers["content-type"].startswith("text/plain")
        return headers

    def sum(self, mode=None):
        status, headers, body = self.get("/smartMeters/sum" + (f"?mode={mode}" if mode else ""))
        assert status == 200, body
        assert headers["content-type"] == "application/json"
        assert SUM_RE.match(body), body
        return body, int(headers["x-readings-count"])

    def metrics(self):
        status, _, body = self.get("/metrics")
        assert status == 200
        return {m.group(1): int(m.group(2))
                for m in re.finditer(r"^(aggregator_\w+) ([0-9]+)$", body, re.M)}

    def stderr(self):
        return self.stderr_path.read_text(errors="replace")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc.stdout.close()

    def stop(self):
        """SIGTERM; returns the exit status (a sanitizer's report makes it
        non-zero). A process that does not stop in 10 s is killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
                return "hung"
        self.proc.stdout.close()
        return self.proc.returncode


@pytest.fixture
def start(tmp_path):
    servers = []

    def _start(*args, **kw):
        s = Server(tmp_path, args, **kw)
        servers.append(s)
        return s

    yield _start
    # Every server must shut down cleanly; under ASan this also runs the
    # leak check at exit.
    failed = []
    for s in servers:
        if s.proc.stdout.closed:
            continue
        rc = s.stop()
        if rc != 0:
            failed.append(f"exit {rc}:\n{s.stderr()[-3000:]}")
    assert not failed, "\n".join(failed)


def exact_sum_py(path):
    """The file's total as a '1234.567' string, in Python integers (no floats)."""
    data = pathlib.Path(path).read_bytes()
    header, _, body = data.partition(b"\n")
    assert header == b"meter_id,kwh"
    milli = count = 0
    for line in body.split(b"\n"):
        if line:
            whole, _, frac = line.split(b",")[1].partition(b".")
            milli += int(whole) * 1000 + int(frac.ljust(3, b"0"))
            count += 1
    return f"{milli // 1000}.{milli % 1000:03d}", count


def exact_sum(path):
    """The same for a generated file (exactly three decimals), with mawk:
    ~10x faster than Python on 10M lines. Doubles are exact below 2**53;
    10M readings stay below 1e11 milli-kWh."""
    out = subprocess.run(["awk", "-F[,.]", 'NR == 1 && $0 != "meter_id,kwh" { exit 3 }'
                          ' NR > 1 { s += $2 * 1000 + $3; n++ } END { printf "%.0f %d\\n", s, n }',
                          str(path)], capture_output=True, text=True, check=True, timeout=120).stdout
    milli, count = map(int, out.split())
    assert milli < 2**53
    return f"{milli // 1000}.{milli % 1000:03d}", count


def sha(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def error_json(status_body, status):
    code, headers, body = status_body
    assert code == status, (code, body)
    assert headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert doc["error"] and doc["detail"], doc
    return doc


# ---- endpoints -------------------------------------------------------------

def test_aggregator_health(start):
    s = start()
    status, headers, body = s.get("/health")
    assert (status, body) == (200, '{"status":"UP"}')
    assert headers["content-type"] == "application/json"


def test_aggregator_sum_before_generation_is_404(start):
    s = start()
    for mode in ("", "?mode=naive", "?mode=streaming"):
        doc = error_json(s.get("/smartMeters/sum" + mode), 404)
        assert "randomSmartMeterValues" in doc["detail"]
    assert not s.data_file.exists()


def test_aggregator_generate_reproducible_and_well_formed(start, tmp_path):
    s = start(data_file=tmp_path / "a" / "b" / "readings.csv")   # parents created
    assert s.generate(1000, seed=42)["x-seed"] == "42"
    first = s.data_file.read_bytes()
    s.generate(1000, seed=42)
    assert s.data_file.read_bytes() == first
    s.generate(1000, seed=43)
    assert s.data_file.read_bytes() != first

    lines = first.split(b"\n")
    assert lines[0] == b"meter_id,kwh" and lines[-1] == b""
    readings = lines[1:-1]
    assert len(readings) == 1000
    millis = []
    for line in readings:
        m = LINE_RE.match(line)
        assert m, line
        assert 1 <= int(m.group(1)) <= 1_000_000
        milli = int(m.group(2)) * 1000 + int(m.group(3))
        assert 100 <= milli <= 10_000, line
        millis.append(milli)
    assert len(set(millis)) > 500        # random, not constant
    assert min(millis) < 1000 and max(millis) > 9000
    assert oct(s.data_file.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in s.data_file.parent.iterdir()) == ["readings.csv"]


def test_aggregator_generate_without_seed_differs(start):
    s = start()
    seed1 = s.generate(200)["x-seed"]
    a = s.data_file.read_bytes()
    seed2 = s.generate(200)["x-seed"]
    assert seed1 != seed2 and s.data_file.read_bytes() != a
    s.generate(200, seed=seed1)                 # the reported seed replays the file
    assert s.data_file.read_bytes() == a


@pytest.mark.parametrize("n", [1, 1000, 123457])
def test_aggregator_sum_exact_both_modes(start, n):
    s = start()
    s.generate(n, seed=n)
    expected = exact_sum_py(s.data_file)
    assert exact_sum(s.data_file) == expected       # the fast reference agrees
    assert s.sum() == expected
    assert s.sum("naive") == expected
    assert s.sum("streaming") == expected


def test_aggregator_sum_known_values(start):
    s = start()
    s.data_file.parent.mkdir(parents=True)
    # 100 readings 0.001 .. 0.100 kWh plus values with fewer decimals,
    # CRLF and no final newline: all exact.
    rows = [f"{i},0.{i:03d}" for i in range(1, 101)] + ["7,5.5\r", "8,10", "9,0.25"]
    s.data_file.write_text("meter_id,kwh\n" + "\n".join(rows))
    for mode in ("naive", "streaming"):
        assert s.sum(mode) == ("20.800", 103)     # 5.050 + 5.5 + 10 + 0.25


@pytest.mark.parametrize("query,why", [
    ("", "missing meterCount"),
    ("?meterCount=", "missing meterCount"),
    ("?meterCount=abc", "positive integer"),
    ("?meterCount=0", "at least 1"),
    ("?meterCount=-5", "positive"),
    ("?meterCount=1.5", "positive integer"),
    ("?meterCount=1e3", "positive integer"),
    ("?meterCount=%2010", "positive integer"),
    ("?meterCount=99999999999", "at most 1000000000"),
    ("?meterCount=1000000001", "at most 1000000000"),
    ("?meterCount=123456789012345678901234567890", "at most 1000000000"),
    ("?meterCount=10&seed=abc", "seed"),
    ("?meterCount=10&seed=-1", "seed"),
])
def test_aggregator_generate_bad_requests(start, query, why):
    s = start()
    doc = error_json(s.post("/smartMeters/randomSmartMeterValues" + query), 400)
    assert doc["error"] == "bad request"
    assert why in doc["detail"], doc
    assert not s.data_file.exists()


def test_aggregator_generate_larger_than_free_disk_is_400(tmp_path):
    # A 1 MiB tmpfs in a private mount namespace (root only; skipped
    # otherwise) holds the data directory.
    mnt = tmp_path / "small"
    mnt.mkdir()
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {mnt}"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip("needs unshare -m and mount (root)")
    data = mnt / "readings.csv"
    script = (f"mount -t tmpfs -o size=1m tmpfs {mnt} && exec {BIN} --port 0 --bind 127.0.0.1 "
              f"--data-file {data}")
    p = subprocess.Popen(["unshare", "-m", "sh", "-c", script], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, env=clean_env())
    try:
        port = int(p.stdout.readline().decode().strip().rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

        def post(n):
            conn.request("POST", f"/smartMeters/randomSmartMeterValues?meterCount={n}")
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode()

        doc = error_json(post(100_000), 400)        # ~1.5 MB > 1 MiB
        assert re.search(r"meterCount=100000 needs up to 1\.4 MiB but only [01]\.[0-9] MiB are free in ",
                         doc["detail"]), doc
        assert post(1000)[0] == 200                 # small enough still works
        conn.close()
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=5) == 0
        p.stdout.close()


def test_aggregator_write_failure_keeps_old_file(start):
    # RLIMIT_FSIZE makes write() fail with EFBIG part way (SIGXFSZ ignored).
    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))

    s = start(preexec_fn=limit_file_size)
    s.generate(1000, seed=1)
    old = s.data_file.read_bytes()
    doc = error_json(s.post("/smartMeters/randomSmartMeterValues?meterCount=1000000"), 507)
    assert doc["error"] == "insufficient storage" and "File too large" in doc["detail"], doc
    assert s.data_file.read_bytes() == old
    assert sorted(p.name for p in s.data_file.parent.iterdir()) == ["readings.csv"]
    assert s.get("/health")[0] == 200
    assert s.sum("streaming") == exact_sum_py(s.data_file)


def test_aggregator_bad_mode_wrong_method_unknown_path(start):
    s = start()
    assert "mode" in error_json(s.get("/smartMeters/sum?mode=fast"), 400)["detail"]
    for method, path, allow in (("GET", "/smartMeters/randomSmartMeterValues?meterCount=5", "POST"),
                                ("PUT", "/smartMeters/randomSmartMeterValues?meterCount=5", "POST"),
                                ("POST", "/smartMeters/sum", "GET"),
                                ("DELETE", "/smartMeters/sum", "GET"),
                                ("POST", "/health", "GET")):
        r = s.request(method, path)
        error_json(r, 405)
        assert r[1]["allow"] == allow
    for path in ("/", "/smartMeters", "/smartMeters/sum/", "/smartmeters/sum", "/actuator/health"):
        error_json(s.get(path), 404)
    assert not s.data_file.exists()


@pytest.mark.parametrize("content,line,why", [
    ("", 1, "header"),
    ("meter,kwh\n1,2.000\n", 1, "header"),
    ("meter_id,kwh\n1,1.000\n2,2.000\n3,abc\n", 4, "kwh"),
    ("meter_id,kwh\n1,1.000\n2,1.2345\n", 3, "more than 3 decimals"),
    ("meter_id,kwh\n1,1.000\n2\n", 3, "meter_id,kwh"),
    ("meter_id,kwh\n1,1.000\n2,3.000,4\n", 3, "too many fields"),
    ("meter_id,kwh\n1,1.000\n\n2,1.000\n", 3, "empty line"),
    ("meter_id,kwh\n1,-1.000\n", 2, "kwh"),
    ("meter_id,kwh\nx1,1.000\n", 2, "meter_id"),
    ("meter_id,kwh\n1,\n", 2, "kwh is missing"),
    ("meter_id,kwh\n1,2.\n", 2, "kwh"),
    ("meter_id,kwh\n1,2.000\nLONG\n", 3, "too long"),
], ids=lambda v: re.sub(r"\W+", "_", v)[:30] if isinstance(v, str) else None)
def test_aggregator_malformed_csv_names_the_line(start, content, line, why):
    s = start()
    s.data_file.parent.mkdir(parents=True)
    s.data_file.write_text(content.replace("LONG", "9" * 300_000))  # past the 256 KiB line buffer
    for mode in ("naive", "streaming"):
        doc = error_json(s.get(f"/smartMeters/sum?mode={mode}"), 422)
        assert doc["error"] == "malformed csv"
        assert doc["line"] == line, doc
        assert f"line {line}" in doc["detail"] and why in doc["detail"], doc
    assert s.metrics()["aggregator_heap_used_bytes"] == 0
    assert s.get("/health")[0] == 200


def test_aggregator_sum_overflow_names_the_line(start):
    # 12-digit kWh is the parser's limit (1e15 milli-kWh); int64 holds
    # 9223 of them, so reading 9224 (CSV line 9225) overflows.
    s = start()
    s.data_file.parent.mkdir(parents=True)
    s.data_file.write_text("meter_id,kwh\n" + "1,999999999999.999\n" * 10000)
    for mode in ("naive", "streaming"):
        doc = error_json(s.get(f"/smartMeters/sum?mode={mode}"), 422)
        assert doc["error"] == "sum overflow" and doc["line"] == 9225, doc
    s.data_file.write_text("meter_id,kwh\n1,9999999999999.000\n")
    assert "too large" in error_json(s.get("/smartMeters/sum"), 422)["detail"]


def test_aggregator_request_log_lines(start):
    s = start()
    s.get("/health")
    s.post("/smartMeters/randomSmartMeterValues?meterCount=abc")
    s.get("/smartMeters/sum?mode=streaming")
    time.sleep(0.2)
    log = s.stderr()
    assert re.search(r"^aggregator: GET /health 200 [0-9.]+ ms$", log, re.M), log
    assert re.search(r"^aggregator: POST /smartMeters/randomSmartMeterValues\?meterCount=abc 400 [0-9.]+ ms$",
                     log, re.M), log
    assert re.search(r"^aggregator: GET /smartMeters/sum\?mode=streaming 404 [0-9.]+ ms$", log, re.M), log


# ---- the heap cap ----------------------------------------------------------

def test_aggregator_heap_cap_fails_request_and_recovers(start):
    s = start("--max-heap", "256m")
    assert s.metrics()["aggregator_heap_max_bytes"] == 256 << 20
    s.generate(10_000_000, seed=7)
    expected = exact_sum(s.data_file)

    doc = error_json(s.get("/smartMeters/sum"), 500)
    assert doc["error"] == "out of memory"
    assert "load_readings" in doc["detail"] and "256 MiB" in doc["detail"], doc
    m = re.search(r"^aggregator: out of memory in load_readings after ([0-9]+) readings "
                  r"\(heap cap 256 MiB\)$", s.stderr(), re.M)
    assert m, s.stderr()
    # glibc: 40 usable bytes a reading + its pointer slot (~4.5M fit);
    # under ASan usable is exactly 32 (~6.3M). Never all 10M.
    assert 2_000_000 < int(m.group(1)) < 8_000_000

    assert s.get("/health")[0] == 200
    assert s.sum("streaming") == expected
    metrics = s.metrics()
    assert metrics["aggregator_heap_used_bytes"] == 0
    assert metrics["aggregator_out_of_memory_total"] == 1
    assert metrics["aggregator_heap_peak_bytes"] <= 256 << 20

    s.generate(1_000_000, seed=8)
    assert s.sum() == exact_sum(s.data_file)
    assert s.metrics()["aggregator_heap_used_bytes"] == 0


def vm_kib(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def test_aggregator_naive_memory_grows_and_is_given_back(start):
    if sanitized():
        pytest.skip("ASan's allocator keeps freed memory in quarantine")
    s = start("--max-heap", "0")
    s.generate(1_000_000, seed=9)
    idle = vm_kib(s.proc.pid, "VmRSS")
    for mode in ("streaming", "naive", "naive", "naive"):
        s.sum(mode)
        if mode == "streaming":
            assert vm_kib(s.proc.pid, "VmHWM") < idle + 8 * 1024   # O(1): one 256 KiB buffer
    # 1M objects of 48 bytes + the pointer array, once; not stacked per request.
    peak = vm_kib(s.proc.pid, "VmHWM")
    assert idle + 40 * 1024 < peak < idle + 100 * 1024, (idle, peak)
    assert vm_kib(s.proc.pid, "VmRSS") < idle + 8 * 1024


def test_aggregator_heap_cap_from_env_and_sizes(start):
    for value, expected in (("768m", 768 << 20), ("1g", 1 << 30), ("1GiB", 1 << 30),
                            ("65536", 65536), ("512k", 512 << 10), ("0", 0)):
        s = start(env={"AGGREGATOR_MAX_HEAP": value})
        assert s.metrics()["aggregator_heap_max_bytes"] == expected
        assert s.stop() == 0
    # The flag wins over the environment.
    s = start("--max-heap", "300m", env={"AGGREGATOR_MAX_HEAP": "1g"})
    assert s.metrics()["aggregator_heap_max_bytes"] == 300 << 20


def test_aggregator_default_cap_is_a_quarter_of_memory(start):
    s = start()
    cap = s.metrics()["aggregator_heap_max_bytes"]
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < cap <= ram // 4
    assert "25% of" in s.stderr()


def test_aggregator_malloc_failure_is_out_of_memory(start):
    # No cap of our own; the address space limit makes malloc return NULL.
    if sanitized():
        pytest.skip("ASan reserves terabytes of address space for its shadow")
    limit = 256 << 20

    def cap_address_space():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    s = start("--max-heap", "0", "--threads", "2", preexec_fn=cap_address_space)
    s.generate(5_000_000, seed=3)
    doc = error_json(s.get("/smartMeters/sum"), 500)
    assert doc["error"] == "out of memory" and "malloc failed" in doc["detail"], doc
    assert "malloc returned NULL" in s.stderr()
    assert s.get("/health")[0] == 200
    assert s.sum("streaming") == exact_sum(s.data_file)
    assert s.metrics()["aggregator_heap_used_bytes"] == 0


# ---- concurrency -----------------------------------------------------------

def test_aggregator_sum_during_generation_reads_one_file(start):
    s = start()
    s.generate(1000, seed=1)
    old = exact_sum(s.data_file)
    done = threading.Event()
    results = []

    def generate():
        try:
            s.generate(3_000_000, seed=2)
        finally:
            done.set()

    t = threading.Thread(target=generate)
    t.start()
    while not done.is_set():
        for mode in ("naive", "streaming"):
            results.append(s.sum(mode))
    t.join()
    new = exact_sum(s.data_file)
    results.append(s.sum())
    assert set(results) <= {old, new}, (set(results), old, new)
    assert results[-1] == new
    assert sorted(p.name for p in s.data_file.parent.iterdir()) == ["readings.csv"]


def test_aggregator_concurrent_generations_do_not_corrupt(start):
    s = start()
    shas = {}
    for seed in (11, 12):
        s.generate(300_000, seed=seed)
        shas[seed] = sha(s.data_file)
    for _ in range(3):
        threads = [threading.Thread(target=s.generate, args=(300_000, seed)) for seed in (11, 12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sha(s.data_file) in shas.values()
        assert sorted(p.name for p in s.data_file.parent.iterdir()) == ["readings.csv"]


# ---- flags and lifecycle ---------------------------------------------------

def test_aggregator_sigterm_exits_zero(start):
    s = start()
    s.get("/health")
    t = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(timeout=5) == 0
    assert time.monotonic() - t < 3
    assert "shutting down" in s.stderr()


def test_aggregator_sigterm_during_long_sum_exits_zero(start):
    s = start("--max-heap", "0")
    s.generate(20_000_000, seed=5)
    replies = []
    def sum_():
        try:
            replies.append(s.get("/smartMeters/sum"))
        except (ConnectionError, http.client.HTTPException) as e:
            replies.append((None, {}, repr(e)))

    t = threading.Thread(target=sum_)
    t.start()
    time.sleep(0.5)
    start_t = time.monotonic()
    s.proc.send_signal(signal.SIGINT)
    assert s.proc.wait(timeout=5) == 0
    assert time.monotonic() - start_t < 3
    t.join(timeout=10)
    # The running sum is told the server is going away before it closes.
    assert len(replies) == 1 and replies[0][0] == 503, replies
    assert json.loads(replies[0][2])["error"] == "shutting down"
    assert "SIGINT, shutting down" in s.stderr()


def test_aggregator_help_and_bad_flags():
    p = subprocess.run([BIN, "--help"], capture_output=True, text=True, env=clean_env(), timeout=10)
    assert p.returncode == 0 and "usage: aggregator" in p.stdout and "--max-heap" in p.stdout
    for argv, env in ((["--port", "abc"], None), (["--port", "70000"], None), (["--bogus"], None),
                      (["--max-heap", "12q"], None), (["--max-heap", "-1"], None),
                      (["--threads", "0"], None), (["--bind", "not-an-ip"], None),
                      (["stray"], None), (["--port"], None),
                      ([], {"AGGREGATOR_PORT": "x"}), ([], {"AGGREGATOR_MAX_HEAP": "lots"})):
        p = subprocess.run([BIN, *argv], capture_output=True, text=True, env=clean_env(env), timeout=10)
        assert p.returncode == 2, (argv, env, p.stderr)
        assert "usage: aggregator" in p.stderr
        assert p.stdout == ""


def test_aggregator_env_data_file_port_threads(tmp_path):
    # The fixture passes --data-file; here the environment alone configures it.
    data = tmp_path / "env" / "x.csv"
    p = subprocess.Popen([BIN, "--bind", "127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=clean_env({"AGGREGATOR_DATA_FILE": str(data), "AGGREGATOR_PORT": "0",
                                        "AGGREGATOR_THREADS": "2"}))
    try:
        port = int(p.stdout.readline().decode().strip().rsplit(":", 1)[1])
        assert port != 8080
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/smartMeters/randomSmartMeterValues?meterCount=10&seed=1")
        assert conn.getresponse().status == 200
        conn.close()
        assert data.exists()
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=5) == 0
        assert "2 worker threads" in p.stderr.read().decode()
        p.stdout.close()
        p.stderr.close()

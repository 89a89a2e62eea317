"""Delivery without loss: retries, the disk spool, the exit deadline.

Every test runs a real process with the agent preloaded against the test
receiver's fault modes. What was produced is read from the file sink
(PYROAGENT_OUTPUT_DIR gets every profile, whatever happens to the upload);
what was delivered is what the receiver accepted. A profile is known by its
time_nanos (one per interval and kind)."""
import gzip
import json
import pathlib
import re
import socket
import subprocess
import sys
import time
import zlib

import pytest

from agentrun import BUILD, ROOT, agent_env

sys.path.insert(0, str(ROOT / "tests" / "receiver"))
import protowire  # noqa: E402
from receiver import Receiver  # noqa: E402

WORK = BUILD / "programs" / "deliver_work"
SERVICE = "deliver"


# --- helpers --------------------------------------------------------------------
def delivery_env(out, url, spool=None, extra=None):
    env = {
        "PYROSCOPE_SERVER_ADDRESS": url,
        "PYROSCOPE_APPLICATION_NAME": SERVICE,
        "PYROSCOPE_UPLOAD_INTERVAL": "500ms",
        "PYROSCOPE_PROFILER_ALLOC": "0",
        # room to replay a backlog at exit on a loaded machine; the tests
        # of the deadline itself set 1s
        "PYROAGENT_EXIT_TIMEOUT": "3s",
    }
    if spool is not None:
        env["PYROAGENT_SPOOL_DIR"] = str(spool)
    env.update(extra or {})
    return agent_env(env, output_dir=out)


def run_work(seconds, env, kill=False, timeout=60):
    """Runs deliver_work; returns (process, total wall seconds, work seconds)."""
    argv = [str(WORK), str(seconds)] + (["kill"] if kill else [])
    t0 = time.monotonic()
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    total = time.monotonic() - t0
    if not kill:
        assert p.returncode == 0, f"exit {p.returncode}\n{p.stderr}"
    work = json.loads(p.stdout)["work_seconds"] if p.stdout.strip() else None
    return p, total, work


def produced(out, kind="cpu"):
    """time_nanos of every profile the process made, in the order made."""
    files = sorted(pathlib.Path(out).glob(f"*.{kind}.*.pb.gz"),
                   key=lambda f: int(f.name.split(".")[-3]))
    return [protowire.decode_profile(gzip.decompress(f.read_bytes()))["time_nanos"]
            for f in files]


def received(rec, name="process_cpu"):
    """time_nanos of every profile the receiver accepted, in arrival order."""
    out = []
    for r in rec.requests():
        if r["status"] != 200:
            continue
        for prof in r["profiles"]:
            labels = {lp["name"]: lp["value"] for lp in r["series"][prof["series"]]}
            if labels.get("__name__") == name:
                out.append(prof["time_nanos"])
    return out


def pushes(rec):
    return [r for r in rec.requests() if r["path"] == "/push.v1.PusherService/Push"]


def spool_files(spool):
    return sorted(pathlib.Path(spool).glob(f"{SERVICE}.*.zst"))


def spool_time(path):
    """The profile time in a spool file's header (agent/spool.c's format:
    magic, header length, header CRC, header {time u64, size u32, labels}, the
    zstd frame, a CRC of everything before it; little endian)."""
    b = path.read_bytes()
    assert b[:8] == b"PYROSPL1"
    return int.from_bytes(b[16:24], "little")


def set_spool_time(path, time_ns):
    """Rewrites a spool file's profile time, keeping both CRCs valid."""
    b = bytearray(path.read_bytes())
    hlen = int.from_bytes(b[8:12], "little")
    b[16:24] = time_ns.to_bytes(8, "little")
    b[12:16] = zlib.crc32(bytes(b[16:16 + hlen])).to_bytes(4, "little")
    b[-4:] = zlib.crc32(bytes(b[:-4])).to_bytes(4, "little")
    path.write_bytes(bytes(b))


def closed_port_url():
    """A URL where nothing listens: every connection is refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def receiver(tmp_path):
    started = []

    def start(**faults):
        rec = Receiver(**faults)
        rec.start(tmp_path / f"rec{len(started)}")
        started.append(rec)
        return rec

    yield start
    for rec in started:
        rec.stop()


def assert_once_in_order(got, made, what=""):
    assert len(got) == len(set(got)), f"{what}: a profile arrived twice: {got}"
    assert got == made, f"{what}: received {len(got)} {got}\nproduced {len(made)} {made}"


# --- outages ----------------------------------------------------------------------
def test_outage_with_spool_every_profile_once_in_order(tmp_path, receiver):
    rec = receiver(down_for=2.0)
    spool = tmp_path / "spool"
    p, _, _ = run_work(4.0, delivery_env(tmp_path / "out", rec.url, spool,
                                         {"PYROSCOPE_PROFILER_ALLOC": "4k"}))
    assert any(r["status"] == 503 for r in pushes(rec)), "the outage did not happen"
    cpu = produced(tmp_path / "out", "cpu")
    assert len(cpu) >= 6
    assert_once_in_order(received(rec, "process_cpu"), cpu, "cpu")
    assert_once_in_order(received(rec, "memory"), produced(tmp_path / "out", "memory"), "memory")
    assert "keeping them in the spool" in p.stderr, p.stderr
    assert re.search(r"info: \d+ profiles sent, [1-9]\d* spooled, [1-9]\d* replayed, 0 dropped",
                     p.stderr), p.stderr
    assert not spool_files(spool), "replayed files must leave the spool"


def test_outage_without_spool_memory_backlog_covers_it(tmp_path, receiver):
    rec = receiver(down_for=2.0)
    p, _, _ = run_work(4.0, delivery_env(tmp_path / "out", rec.url))
    assert any(r["status"] == 503 for r in pushes(rec))
    cpu = produced(tmp_path / "out")
    assert len(cpu) >= 6
    assert_once_in_order(received(rec), cpu)
    assert "keeping up to 64 in memory" in p.stderr, p.stderr


def test_retry_after_is_honoured(tmp_path, receiver):
    rec = receiver(fail_first=1, retry_after=2)
    run_work(3.5, delivery_env(tmp_path / "out", rec.url))
    reqs = pushes(rec)
    assert reqs[0]["status"] == 503 and reqs[1]["status"] == 200
    gap = reqs[1]["time"] - reqs[0]["time"]
    assert gap >= 1.9, f"retried {gap:.2f}s after a Retry-After: 2"
    assert_once_in_order(received(rec), produced(tmp_path / "out"))


@pytest.mark.parametrize("fault", ["garbage", "reset", "fin"])
def test_bad_replies_are_logged_and_retried(tmp_path, receiver, fault):
    rec = receiver(**({"garbage": True} if fault == "garbage" else {"close": fault}))
    env = delivery_env(tmp_path / "out", rec.url, tmp_path / "spool")
    proc = subprocess.Popen([str(WORK), "3"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(1.3)
    rec.set_mode(garbage=False, close=False)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert any(r["fault"] in ("garbage", "reset", "close") for r in pushes(rec))
    # push.c names the failure once; the uploader says what it does about it
    assert re.search(r"warn: cannot push to Pyroscope at \S+: ", err), err
    assert_once_in_order(received(rec), produced(tmp_path / "out"))


# --- the host never waits -------------------------------------------------------------
def test_slow_server_does_not_slow_the_host(tmp_path, receiver):
    rec = receiver(delay=5)
    _, plain_total, plain_work = run_work(2.5, agent_env(preload=False))
    p, total, work = run_work(2.5, delivery_env(tmp_path / "out", rec.url,
                                                extra={"PYROAGENT_EXIT_TIMEOUT": "1s"}))
    assert work <= plain_work * 1.3 + 0.3, f"work took {work:.2f}s, {plain_work:.2f}s plain"
    # exit: within PYROAGENT_EXIT_TIMEOUT=1s (and process start) of the work
    assert total - work <= 1.0 + 0.7, f"exit took {total - work:.2f}s\n{p.stderr}"
    # it was sent (the receiver records a request once its delay is over)
    assert rec.wait_requests(1, timeout=8)


@pytest.mark.parametrize("with_spool", [True, False], ids=["spool", "nospool"])
def test_exit_while_server_hangs(tmp_path, receiver, with_spool):
    rec = receiver(delay=60)
    spool = tmp_path / "spool" if with_spool else None
    p, total, work = run_work(2.0, delivery_env(tmp_path / "out1", rec.url, spool,
                                                {"PYROAGENT_EXIT_TIMEOUT": "1s"}))
    assert total - work <= 1.0 + 0.7, f"exit took {total - work:.2f}s\n{p.stderr}"
    made = produced(tmp_path / "out1")
    assert len(made) >= 3
    if not with_spool:
        assert re.search(r"exit: \d+ profile\(s\) .*dropped \(no PYROAGENT_SPOOL_DIR", p.stderr), \
            p.stderr
        assert not list(tmp_path.glob("**/*.zst"))
        return
    # nothing was delivered: every profile, the one in flight too, is spooled
    assert [spool_time(f) for f in spool_files(spool)] == made, p.stderr
    assert re.search(rf"info: 0 profiles sent, {len(made)} spooled, 0 replayed, 0 dropped",
                     p.stderr), p.stderr
    # the next process of the service replays them, once, before its own
    rec2 = receiver()
    run_work(1.2, delivery_env(tmp_path / "out2", rec2.url, spool))
    assert_once_in_order(received(rec2), made + produced(tmp_path / "out2"))
    assert not spool_files(spool)


def test_crash_loses_nothing_already_produced(tmp_path, receiver):
    # after the first failure the agent waits 10 s (Retry-After): the
    # profiles made meanwhile must reach the disk at once, not at the next
    # attempt, which never comes
    rec = receiver(status=503, retry_after=10)
    spool = tmp_path / "spool"
    p, _, _ = run_work(3.0, delivery_env(tmp_path / "out1", rec.url, spool), kill=True)
    assert p.returncode == -9
    made = produced(tmp_path / "out1")
    kept = [spool_time(f) for f in spool_files(spool)]
    # SIGKILL runs no exit flush: what is on disk was spooled during the
    # outage (the last profile may have been on its way there)
    assert len(made) >= 3 and kept == made[:len(kept)] and len(kept) >= len(made) - 1, \
        (kept, made)
    rec2 = receiver()
    run_work(1.2, delivery_env(tmp_path / "out2", rec2.url, spool))
    assert_once_in_order(received(rec2), kept + produced(tmp_path / "out2"))


# --- refusals and the spool's rules ------------------------------------------------------
def test_400_is_dropped_not_retried_and_logged_once(tmp_path, receiver):
    rec = receiver(status=400)
    spool = tmp_path / "spool"
    p, _, _ = run_work(2.5, delivery_env(tmp_path / "out", rec.url, spool))
    made = produced(tmp_path / "out")
    reqs = pushes(rec)
    ids = [i for r in reqs for i in r["ids"]]
    assert len(reqs) == len(made) >= 3, (len(reqs), len(made))
    assert len(set(ids)) == len(ids), "a refused profile was sent again"
    assert len(re.findall(r"rejected a process_cpu profile \(HTTP 400\)", p.stderr)) == 1, p.stderr
    assert not spool_files(spool), "a refused profile is not kept"
    assert re.search(rf"0 spooled, 0 replayed, {len(made)} dropped \(.*{len(made)} refused",
                     p.stderr), p.stderr


def test_spool_never_replays_past_max_age(tmp_path, receiver):
    spool = tmp_path / "spool"
    run_work(2.0, delivery_env(tmp_path / "out1", closed_port_url(), spool))
    files = spool_files(spool)
    made = produced(tmp_path / "out1")
    assert [spool_time(f) for f in files] == made and len(files) >= 3
    now = time.time_ns()
    set_spool_time(files[0], now - 2 * 3600 * 10**9)  # past any window
    set_spool_time(files[1], now - 11 * 60 * 10**9)   # past the 10m set below
    set_spool_time(files[2], now - 9 * 60 * 10**9)    # inside it
    rec = receiver()
    p, _, _ = run_work(1.2, delivery_env(tmp_path / "out2", rec.url, spool,
                                         {"PYROAGENT_SPOOL_MAX_AGE": "10m"}))
    # the profiles inside keep their own time_nanos: only the spool's clock aged
    assert_once_in_order(received(rec), made[2:] + produced(tmp_path / "out2"))
    assert "older than PYROAGENT_SPOOL_MAX_AGE" in p.stderr, p.stderr
    assert re.search(r"2 dropped \(.*2 too old", p.stderr), p.stderr
    assert not spool_files(spool), "too old files are removed"


def test_spool_is_private_and_skips_corrupt_files(tmp_path, receiver):
    spool = tmp_path / "a" / "spool"
    run_work(2.0, delivery_env(tmp_path / "out1", closed_port_url(), spool))
    files = spool_files(spool)
    made = produced(tmp_path / "out1")
    assert len(files) == len(made) >= 3
    assert spool.stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o700
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    # garbage that sorts first, and a real file cut short
    junk = spool / f"{SERVICE}.{1:020d}.1.{1:020d}.zst"
    junk.write_bytes(b"PYROSPL1 not really")
    data = files[1].read_bytes()
    files[1].write_bytes(data[:len(data) // 2])
    rec = receiver()
    p, _, _ = run_work(1.2, delivery_env(tmp_path / "out2", rec.url, spool))
    assert "is not a readable spool file: removed" in p.stderr, p.stderr
    assert_once_in_order(received(rec), [made[0]] + made[2:] + produced(tmp_path / "out2"))
    assert not list(spool.iterdir())


def test_unusable_spool_dir_falls_back_to_memory(tmp_path, receiver):
    spool = tmp_path / "open"
    spool.mkdir()
    spool.chmod(0o777)  # world-writable without the sticky bit: refused
    rec = receiver()
    p, _, _ = run_work(1.2, delivery_env(tmp_path / "out", rec.url, spool))
    assert re.search(r"PYROAGENT_SPOOL_DIR=\S+ is not usable", p.stderr), p.stderr
    assert_once_in_order(received(rec), produced(tmp_path / "out"))
    assert not list(spool.iterdir())


# --- TLS: a real handshake --------------------------------------------------------
@pytest.fixture
def tls_receiver(tmp_path):
    """A receiver over https with a self-signed certificate for 127.0.0.1."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    rec = Receiver()
    rec.start(tmp_path / "rec", tls=(str(cert), str(key)))
    yield rec, cert
    rec.stop()


@pytest.mark.parametrize("how", ["verified", "unknown_ca", "insecure"])
def test_https_verifies_the_server(tmp_path, tls_receiver, how):
    """Verification is on by default: a certificate from an unknown CA is
    refused (nothing is sent, one line says why); PYROAGENT_CA_FILE makes
    it known; PYROAGENT_TLS_INSECURE sends anyway and says so."""
    rec, cert = tls_receiver
    assert rec.url.startswith("https://")
    extra = {"PYROAGENT_EXIT_TIMEOUT": "2s", "PYROSCOPE_LOG_LEVEL": "info"}
    if how == "verified":
        extra["PYROAGENT_CA_FILE"] = str(cert)
    elif how == "insecure":
        extra["PYROAGENT_TLS_INSECURE"] = "true"
    p, _, _ = run_work(1.0, delivery_env(tmp_path / "out", rec.url, extra=extra))
    got = received(rec)
    if how == "unknown_ca":
        assert got == [], got
        assert re.search(r"certificate|SSL", p.stderr), p.stderr
    else:
        assert got and got == produced(tmp_path / "out"), (got, p.stderr)
    assert ("TLS verification is OFF" in p.stderr) == (how == "insecure"), p.stderr

"""The test receiver: Pyroscope's acceptance rules and statuses, records,
stored profiles readable by `go tool pprof`, fault modes, HTTP/1.1 details."""
import base64
import gzip
import http.client
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import protowire as pw  # noqa: E402
from receiver import Receiver  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
PUSH = "/push.v1.PusherService/Push"
LABELS = [("__name__", "process_cpu"), ("service_name", "svc"), ("__delta__", "false")]
PROTO = {"Content-Type": "application/proto"}


@pytest.fixture
def rec(tmp_path):
    r = Receiver()
    r.start(tmp_path / "rec")
    yield r
    r.stop()


def make_receiver(tmp_path, **kw):
    r = Receiver(**kw)
    r.start(tmp_path / "rec")
    return r


def post(rec, path, body, headers=None, method="POST"):
    c = http.client.HTTPConnection("127.0.0.1", rec.port, timeout=30)
    try:
        c.request(method, path, body, headers if headers is not None else dict(PROTO))
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def push_body(raw, labels=None, sid="id-1"):
    return pw.encode_push_request([(LABELS if labels is None else labels, [(raw, sid)])])


def push(rec, prof=None, labels=None, raw=None, compress=False, packed=True, headers=None):
    if raw is None:
        prof = pw.cpu_profile() if prof is None else prof
        prof = prof.profile if isinstance(prof, pw.ProfileBuilder) else prof
        raw = pw.encode_profile(prof, packed=packed, compress=compress)
    return post(rec, PUSH, push_body(raw, labels), headers)


def error_of(body):
    doc = json.loads(body)
    return doc["code"], doc["message"]


def go_pprof_raw(path):
    if shutil.which("go") is None:
        pytest.skip("go (golang-go) not installed")
    env = dict(os.environ, HOME="/tmp", GOTOOLCHAIN="local", GOFLAGS="")
    p = subprocess.run(["go", "tool", "pprof", "-raw", str(path)], capture_output=True,
                       text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


# --- the wire format ---------------------------------------------------------------
def test_receiver_varints_round_trip_and_limits():
    for v in (0, 1, 127, 128, 300, 2**32, 2**63 - 1, 2**64 - 1):
        enc = pw.enc_varint(v)
        assert pw.read_varint(enc, 0) == (v, len(enc))
    assert len(pw.enc_varint(-1)) == 10
    assert pw.read_varint(pw.enc_varint(-5), 0)[0] == 2**64 - 5
    # 10 bytes with extra high bits: accepted, high bits dropped (as Go does)
    assert pw.read_varint(b"\xff" * 9 + b"\x7f", 0)[0] == 2**64 - 1
    with pytest.raises(pw.WireError, match="overflow"):
        pw.read_varint(b"\xff" * 10 + b"\x01", 0)
    with pytest.raises(pw.WireError, match="EOF"):
        pw.read_varint(b"\xff\xff", 0)


def test_receiver_decoder_packed_unpacked_unknown_and_merge():
    b = pw.cpu_profile()
    p = b.profile
    for packed in (True, False):
        d = pw.decode_profile(pw.encode_profile(p, packed=packed))
        assert d["sample"][0]["location_id"] == p["sample"][0]["location_id"]
        assert d["sample"][0]["value"] == p["sample"][0]["value"]
        assert d["string_table"] == [s.encode() for s in p["string_table"]]
        assert d["time_nanos"] == p["time_nanos"]
    # negative int64 survives (10-byte varint)
    d = pw.decode_profile(pw.encode({"time_nanos": -3, "string_table": [""]}, pw.PROFILE))
    assert d["time_nanos"] == -3
    # mixed packed + unpacked occurrences of one repeated field append
    s = pw.enc_len(1, pw.enc_varint(1) + pw.enc_varint(2)) + pw.enc_key(1, 0) + pw.enc_varint(3)
    assert pw.decode(s, pw.SAMPLE)["location_id"] == [1, 2, 3]
    # unknown fields of every wire type are skipped, groups included
    unknown = (pw.enc_key(99, 0) + pw.enc_varint(7) + pw.enc_key(98, 1) + b"8bytes!!"
               + pw.enc_len(97, b"xyz") + pw.enc_key(96, 5) + b"4byt"
               + pw.enc_key(95, 3) + pw.enc_key(1, 0) + b"\x01" + pw.enc_key(95, 4))
    d = pw.decode_profile(unknown + pw.encode({"period": 5}, pw.PROFILE))
    assert d["period"] == 5
    # a singular message seen twice merges; a singular scalar keeps the last
    two = (pw.enc_len(11, pw.encode({"type": 1}, pw.VALUE_TYPE))
           + pw.enc_len(11, pw.encode({"unit": 2}, pw.VALUE_TYPE))
           + pw.enc_key(12, 0) + pw.enc_varint(1) + pw.enc_key(12, 0) + pw.enc_varint(9))
    d = pw.decode_profile(two)
    assert d["period_type"] == {"type": 1, "unit": 2} and d["period"] == 9


@pytest.mark.parametrize("data,match", [
    (pw.enc_key(9, 2) + pw.enc_varint(1) + b"x", "wrong wireType"),
    (pw.enc_key(1, 0) + b"\x01", "wrong wireType"),
    (pw.enc_key(0, 0) + b"\x01", "illegal tag 0"),
    (pw.enc_key(99, 6) + b"\x01", "illegal wireType"),
    (pw.enc_key(99, 4), "end group"),
    (pw.enc_key(95, 3) + pw.enc_key(94, 4), "mismatched end group"),
    (pw.enc_key(6, 2) + pw.enc_varint(5) + b"ab", "EOF"),
    (pw.enc_key(2, 2) + pw.enc_varint(2) + pw.enc_key(1, 2) + pw.enc_varint(5), "EOF"),
    (pw.enc_key(99, 1) + b"1234", "EOF"),
])
def test_receiver_decoder_refuses(data, match):
    with pytest.raises(pw.WireError, match=match):
        pw.decode_profile(data)


def test_receiver_gunzip_limited_members_bomb_and_garbage():
    one = gzip.compress(b"a" * 1000)
    assert pw.gunzip_limited(one + one, 10**6) == (b"a" * 2000, False)
    data, over = pw.gunzip_limited(one * 50, 4096)
    assert over and len(data) == 4097
    with pytest.raises(pw.WireError):
        pw.gunzip_limited(one + b"trailing garbage", 10**6)
    with pytest.raises(pw.WireError):
        pw.gunzip_limited(one[:-6], 10**6)


# --- valid pushes --------------------------------------------------------------------
def test_receiver_push_plain_gzip_raw_and_gzip_body_stored_and_pprof_readable(rec):
    plain = pw.cpu_profile().encode()
    status, headers, body = post(rec, PUSH, push_body(plain, sid="p1"))
    assert (status, body) == (200, b"")
    assert headers["content-type"] == "application/proto"
    status, _, _ = post(rec, PUSH, push_body(gzip.compress(plain), sid="p2"))
    assert status == 200
    status, _, _ = post(rec, PUSH, gzip.compress(push_body(plain, sid="p3")),
                        {"Content-Type": "application/proto", "Content-Encoding": "gzip",
                         "Connect-Protocol-Version": "1"})
    assert status == 200
    reqs = rec.requests()
    assert [r["status"] for r in reqs] == [200, 200, 200]
    assert [r["ids"] for r in reqs] == [["p1"], ["p2"], ["p3"]]
    assert [r["profiles"][0]["gzip"] for r in reqs] == [False, True, False]
    assert reqs[2]["content_encoding"] == "gzip"
    for r in reqs:
        assert r["series"] == [[{"name": n, "value": v} for n, v in LABELS]]
        assert r["sample_types"] == ["samples/count", "cpu/nanoseconds"]
        assert r["period_type"] == "cpu/nanoseconds"
        assert r["samples"] == 2 and r["error"] is None and r["warnings"] == []
    profs = rec.profiles()
    assert [name for _, name, _ in profs] == ["process_cpu"] * 3
    assert profs[0][0] == dict(LABELS)
    for _, _, path in profs:
        assert path.name.endswith(".pb.gz")
        raw = path.read_bytes()
        assert raw[:2] == b"\x1f\x8b"
        assert gzip.decompress(raw) == plain
        side = json.loads(path.with_name(path.name.replace(".pb.gz", ".json")).read_text())
        assert {(x["name"], x["value"]) for x in side["labels"]} == set(LABELS)
        assert side["stored"] == str(path)
        out = go_pprof_raw(path)
        assert "leaf_fn" in out and "other_fn" in out and "samples/count cpu/nanoseconds" in out
    lines = (rec.dir / "requests.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == reqs


def test_receiver_push_json_codec_unpacked_and_multi_series(rec):
    raw = pw.cpu_profile().encode(packed=False)
    doc = {"series": [{"labels": [{"name": n, "value": v} for n, v in LABELS],
                       "samples": [{"rawProfile": base64.b64encode(raw).decode(), "ID": "j"}]}]}
    status, headers, body = post(rec, PUSH, json.dumps(doc).encode(),
                                 {"Content-Type": "application/json"})
    assert (status, body, headers["content-type"]) == (200, b"{}", "application/json")
    mem = pw.ProfileBuilder(sample_types=[("alloc_objects", "count"), ("alloc_space", "bytes")],
                            period_type=("space", "bytes"), period=524288)
    mem.sample(["malloc_site", "main"], [2, 1024])
    body = pw.encode_push_request([
        (LABELS, [(raw, "a")]),
        ([("__name__", "memory"), ("service_name", "svc")], [(mem.encode(compress=True), "b")]),
    ])
    assert post(rec, PUSH, body)[0] == 200
    assert [n for _, n, _ in rec.profiles()] == ["process_cpu", "process_cpu", "memory"]
    assert rec.requests()[1]["samples"] == 3


def test_receiver_partial_failure_like_pyroscope(rec):
    # Pyroscope ingests the good series of a request and still answers the
    # error of the bad one.
    good = pw.cpu_profile().encode()
    bad = pw.encode_profile(_prof(lambda b, p: p["location"][0].update(id=0)))
    body = pw.encode_push_request([(LABELS, [(good, "good")]), (LABELS, [(bad, "bad")])])
    st, _, data = post(rec, PUSH, body)
    assert st == 400
    assert "push series with index 1 and id bad failed: location id is 0" in error_of(data)[1]
    assert len(rec.profiles()) == 1
    stored = [p["stored"] is not None for p in rec.requests()[0]["profiles"]]
    assert stored == [True, False]


def test_receiver_concurrent_pushes(rec):
    results = []

    def one(i):
        results.append(post(rec, PUSH, push_body(pw.cpu_profile().encode(), sid=f"c{i}"))[0])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 8
    paths = [p for _, _, p in rec.profiles()]
    assert sorted(int(p.name.split(".")[0]) for p in paths) == list(range(1, 9))
    assert sorted(r["ids"][0] for r in rec.requests()) == sorted(f"c{i}" for i in range(8))
    assert len((rec.dir / "requests.jsonl").read_text().splitlines()) == 8


def test_receiver_accepts_what_pyroscope_accepts(rec):
    # sample labels become series labels; a valid set is fine
    b = pw.cpu_profile()
    b.sample(["leaf_fn"], [1, 10], labels={"thread_name": "worker", "span_id": "x"})
    assert push(rec, b)[0] == 200
    # labels with an empty value are dropped before validation, even bad names
    assert push(rec, labels=LABELS + [("bad-name", "")])[0] == 200
    # dotted names are sanitized; the same value twice is not a duplicate
    assert push(rec, labels=LABELS + [("a.b", "1"), ("a_b", "1")])[0] == 200
    # 30 label names exactly
    many = LABELS + [(f"k{i}", "v") for i in range(27)]
    assert push(rec, labels=many)[0] == 200
    # 1024-byte name, 2048-byte value
    assert push(rec, labels=LABELS + [("n" * 1024, "v" * 2048)])[0] == 200
    # a stack deeper than 1000 frames is accepted with a warning (Pyroscope cuts it)
    deep = pw.cpu_profile()
    deep.sample([f"f{i}" for i in range(1001)], [1, 10])
    assert push(rec, deep)[0] == 200
    assert any("1001 frames" in w for w in rec.requests()[-1]["warnings"])
    # no samples: accepted, noted
    assert push(rec, pw.ProfileBuilder())[0] == 200
    assert any("no samples" in w for w in rec.requests()[-1]["warnings"])
    assert len(rec.profiles()) == 7


def test_receiver_time_window_uses_overridable_now(tmp_path):
    now = 1_700_000_000.0
    rec = make_receiver(tmp_path, now=now)
    try:
        ns = int(now * 1e9)
        assert push(rec, pw.cpu_profile(time_nanos=ns - 59 * 60 * 10**9))[0] == 200
        assert push(rec, pw.cpu_profile(time_nanos=ns + 9 * 60 * 10**9))[0] == 200
        # the window is open at both ends
        assert push(rec, pw.cpu_profile(time_nanos=ns - 3600 * 10**9))[0] == 400
        assert push(rec, pw.cpu_profile(time_nanos=ns + 600 * 10**9))[0] == 400
        assert push(rec, pw.cpu_profile())[0] == 400  # real time is far from `now`
        rec.set_mode(now=None)
        assert push(rec, pw.cpu_profile())[0] == 200
    finally:
        rec.stop()


# --- rejections -------------------------------------------------------------------------
def _labels(extra=(), drop=()):
    return [(n, v) for n, v in LABELS if n not in drop] + list(extra)


def _prof(mut):
    b = pw.cpu_profile()
    mut(b, b.profile)
    return b.profile


def _set(**kv):
    def mut(b, p):
        for k, v in kv.items():
            p[k] = v
    return mut


def _many_samples(b, p):
    for _ in range(16001 - len(p["sample"])):
        p["sample"].append({"location_id": [1], "value": [1, 10], "label": []})


def _sample_labels(n):
    def mut(b, p):
        p["sample"][0]["label"] = [{"key": b.s(f"k{i}"), "num": i} for i in range(n)]
    return mut


# (id, labels, profile or raw bytes, status, code, message part)
MALFORMED = [
    ("no_labels", [], None, 400, "invalid_argument", "at least one label pair"),
    ("no_name", _labels(drop=["__name__"]), None, 400, "invalid_argument",
     "invalid metric name"),
    ("bad_utf8_name_value", _labels(drop=["__name__"], extra=[("__name__", b"\xff")]), None,
     400, "invalid_argument", "invalid metric name"),
    ("no_service_name", _labels(drop=["service_name"]), None, 400, "invalid_argument",
     "strict: Pyroscope would use service_name"),
    ("empty_service_name", _labels(drop=["service_name"], extra=[("service_name", "")]), None,
     400, "invalid_argument", "service name is not provided"),
    ("31_labels", _labels([(f"k{i}", "v") for i in range(28)]), None, 400, "invalid_argument",
     "has 31 label names; limit 30"),
    ("name_too_long", _labels([("n" * 1025, "v")]), None, 400, "invalid_argument",
     "label name too long"),
    ("value_too_long", _labels([("k", "v" * 2049)]), None, 400, "invalid_argument",
     "label value too long"),
    ("dash_in_name", _labels([("bad-name", "v")]), None, 400, "invalid_argument",
     "invalid label name 'bad-name'"),
    ("digit_first", _labels([("1abc", "v")]), None, 400, "invalid_argument",
     "invalid label name '1abc'"),
    ("non_ascii_name", _labels([("naïve", "v")]), None, 400, "invalid_argument",
     "invalid label name"),
    ("bad_utf8_value", _labels([("k", b"\xff\xfe")]), None, 400, "invalid_argument",
     "invalid label value"),
    ("duplicate_name", _labels([("env", "a"), ("env", "b")]), None, 400, "invalid_argument",
     "duplicate label name: 'env'"),
    ("duplicate_after_dots", _labels([("a.b", "1"), ("a_b", "2")]), None, 400,
     "invalid_argument", "after label name sanitization"),
    ("bad_sample_label_name", None,
     _prof(lambda b, p: p["sample"][0]["label"].append({"key": b.s("bad-key"), "str": b.s("v")})),
     400, "invalid_argument", "invalid label name 'bad-key'"),
    ("sample_labels_over_30", _labels([(f"k{i}", "v") for i in range(27)]),
     _prof(lambda b, p: p["sample"][0]["label"].append({"key": b.s("extra"), "str": b.s("v")})),
     400, "invalid_argument", "label names; limit 30"),
    ("no_sample_types", None, _prof(_set(sample_type=[])), 400, "invalid_argument",
     "empty profile"),
    ("too_old", None, _prof(_set(time_nanos=time.time_ns() - 2 * 3600 * 10**9)), 400,
     "invalid_argument", "outside of ingestion window"),
    ("too_new", None, _prof(_set(time_nanos=time.time_ns() + 20 * 60 * 10**9)), 400,
     "invalid_argument", "outside of ingestion window"),
    ("over_16000_samples", None, _prof(_many_samples), 400, "invalid_argument",
     "samples count limit"),
    ("over_100_sample_labels", None, _prof(_sample_labels(101)), 400, "invalid_argument",
     "sample labels limit"),
    ("location_id_0", None, _prof(lambda b, p: p["location"][0].update(id=0)), 400,
     "invalid_argument", "location id is 0"),
    ("function_id_0", None, _prof(lambda b, p: p["function"][0].update(id=0)), 400,
     "invalid_argument", "function id is 0"),
    ("value_length", None, _prof(lambda b, p: p["sample"][0]["value"].append(1)), 400,
     "invalid_argument", "sample value length mismatch"),
    ("string0_not_empty", None, _prof(lambda b, p: p["string_table"].__setitem__(0, "x")), 400,
     "invalid_argument", "string 0 should be empty string"),
    ("empty_string_table", None, _prof(lambda b, p: p["string_table"].clear()), 400,
     "invalid_argument", "string 0 should be empty string"),
    ("sample_type_index", None, _prof(lambda b, p: p["sample_type"][0].update(type=999)), 400,
     "invalid_argument", "sample type type string index out of range"),
    ("sample_label_index", None,
     _prof(lambda b, p: p["sample"][0]["label"].append({"key": 999, "str": 1})), 400,
     "invalid_argument", "sample label string index out of range"),
    ("function_name_index", None, _prof(lambda b, p: p["function"][0].update(name=999)), 400,
     "invalid_argument", "function name string index out of range"),
    ("function_name_negative", None, _prof(lambda b, p: p["function"][0].update(name=-1)),
     400, "invalid_argument", "function name string index out of range"),
    ("function_filename_index", None,
     _prof(lambda b, p: p["function"][0].update(filename=999)), 400, "invalid_argument",
     "function file name string index out of range"),
    ("mapping_filename_index", None,
     _prof(lambda b, p: p["mapping"][0].update(filename=999)), 400, "invalid_argument",
     "mapping file name string index out of range"),
    ("mapping_build_id_index", None,
     _prof(lambda b, p: p["mapping"][0].update(build_id=999)), 400, "invalid_argument",
     "mapping build id string index out of range"),
    ("dash_in_sample_type", None,
     _prof(lambda b, p: p["sample_type"][0].update(type=b.s("cpu-time"))), 400,
     "invalid_argument", "sample type contains -"),
    ("bad_utf8_string", None, _prof(lambda b, p: p["string_table"].append(b"\xc3\x28")), 400,
     "invalid_argument", "invalid utf8 string"),
    # strict: what Pyroscope lets through or repairs, but our agent must not send
    ("strict_time_0", None, _prof(_set(time_nanos=0)), 400, "invalid_argument",
     "strict: time_nanos is 0"),
    ("strict_mapping_id_0", None, _prof(lambda b, p: p["mapping"][0].update(id=0)), 400,
     "invalid_argument", "strict: mapping id is 0"),
    ("strict_missing_location", None,
     _prof(lambda b, p: p["sample"][0]["location_id"].append(77)), 400, "invalid_argument",
     "strict: sample refers to missing location 77"),
    ("strict_missing_function", None,
     _prof(lambda b, p: p["location"][0]["line"][0].update(function_id=55)), 400,
     "invalid_argument", "missing function 55"),
    ("strict_missing_mapping", None,
     _prof(lambda b, p: p["location"][0].update(mapping_id=9)), 400, "invalid_argument",
     "missing mapping 9"),
    ("strict_duplicate_location", None,
     _prof(lambda b, p: p["location"][1].update(id=1)), 400, "invalid_argument",
     "strict: duplicate location id 1"),
    ("strict_unit_index", None, _prof(lambda b, p: p["sample_type"][1].update(unit=999)), 400,
     "invalid_argument", "strict: sample type unit string index 999"),
    ("strict_period_type_index", None,
     _prof(lambda b, p: p["period_type"].update(unit=-2)), 400, "invalid_argument",
     "strict: period unit string index -2"),
    # raw_profile bytes Pyroscope cannot read at all: it answers 500 "unknown"
    ("raw_garbage", None, b"\xff" * 40, 500, "unknown", ""),
    ("raw_too_short", None, b"\x0a\x00", 500, "unknown", "gzip reset: unexpected EOF"),
    ("raw_empty", None, b"", 500, "unknown", "gzip reset: EOF"),
    ("raw_truncated_gzip", None, gzip.compress(pw.cpu_profile().encode())[:-9], 500,
     "unknown", ""),
    ("raw_gzip_trailing_garbage", None, gzip.compress(pw.cpu_profile().encode()) + b"junk",
     500, "unknown", ""),
    ("raw_wrong_wire_type", None,
     pw.cpu_profile().encode() + pw.enc_key(9, 2) + pw.enc_varint(1) + b"x", 500, "unknown",
     "wrong wireType"),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_receiver_rejects_malformed_push(rec, case):
    _, labels, prof, status, code, part = case
    raw = prof if isinstance(prof, bytes) else \
        pw.encode_profile(prof if prof is not None else pw.cpu_profile().profile)
    st, headers, body = post(rec, PUSH, push_body(raw, LABELS if labels is None else labels))
    assert st == status, body
    assert headers["content-type"] == "application/json"
    got_code, message = error_of(body)
    assert got_code == code and part in message, message
    assert rec.profiles() == []
    r = rec.requests()[0]
    assert r["status"] == status and r["code"] == code and part in r["error"]


def test_receiver_non_strict_is_pyroscope_exactly(tmp_path):
    rec = make_receiver(tmp_path, strict=False)
    try:
        assert push(rec, labels=_labels(drop=["service_name"]))[0] == 200
        assert push(rec, _prof(_set(time_nanos=0)))[0] == 200
        assert push(rec, _prof(lambda b, p: p["sample"][0]["location_id"].append(77)))[0] == 200
        assert push(rec, _prof(lambda b, p: p["mapping"][0].update(id=0)))[0] == 200
        # labels are not validated at all when the profile has no samples
        assert push(rec, pw.ProfileBuilder(), labels=[("__name__", "x"), ("bad-", "v")])[0] \
            == 200
        assert rec.profiles()[0][0]["service_name"] == "unknown_service"
        # Pyroscope's own checks still apply
        assert push(rec, _prof(lambda b, p: p["location"][0].update(id=0)))[0] == 400
    finally:
        rec.stop()


def test_receiver_size_limits_and_gzip_bomb(rec):
    # over 2 MiB uncompressed: always 429 (default burst), with a warning
    big = _prof(lambda b, p: p["function"][0].update(name=b.s("x" * (2 * 2**20 + 1))))
    st, _, body = push(rec, big, compress=True)
    assert st == 429 and error_of(body)[0] == "resource_exhausted"
    assert any("burst" in w for w in rec.requests()[-1]["warnings"])
    # over 4 MiB uncompressed: 400 from the decompression limit
    huge = _prof(lambda b, p: p["function"][0].update(name=b.s("y" * (4 * 2**20 + 1))))
    st, _, body = push(rec, huge, compress=True)
    assert st == 400 and "exceeds limit of 4.2 MB" in error_of(body)[1]
    # a gzip bomb: 1 GiB of zeros in 16 gzip members of about 64 KiB each
    member = gzip.compress(bytes(64 * 2**20), compresslevel=9)
    t = time.monotonic()
    st, _, body = push(rec, raw=member * 16)
    assert st == 400 and "exceeds limit" in error_of(body)[1]
    assert time.monotonic() - t < 10
    assert rec.profiles() == []


def test_receiver_body_limit_and_content_encoding_bomb(tmp_path):
    rec = make_receiver(tmp_path, max_body=2**20)
    try:
        bomb = gzip.compress(bytes(64 * 2**20), compresslevel=9)
        st, _, body = post(rec, PUSH, bomb, {"Content-Type": "application/proto",
                                             "Content-Encoding": "gzip"})
        assert st == 429 and error_of(body)[0] == "resource_exhausted"
        # an oversized body is read and discarded: the answer arrives and the
        # connection stays usable
        c = http.client.HTTPConnection("127.0.0.1", rec.port, timeout=30)
        c.request("POST", PUSH, bytes(2**20 + 1), PROTO)
        r = c.getresponse()
        assert r.status == 429 and error_of(r.read())[0] == "resource_exhausted"
        c.request("POST", PUSH, iter([bytes(2**19)] * 3), {**PROTO, "Transfer-Encoding":
                                                            "chunked"}, encode_chunked=True)
        r = c.getresponse()
        assert r.status == 429 and r.getheader("Connection") != "close"
        r.read()
        c.request("POST", "/ingest?name=app&format=pprof", bytes(2**20 + 1),
                  {"Content-Type": "binary/octet-stream"})
        r = c.getresponse()
        assert r.status == 413
        r.read()
        c.request("POST", PUSH, push_body(pw.cpu_profile().encode()), PROTO)
        assert c.getresponse().status == 200
        c.close()
        assert len({r["peer"] for r in rec.requests()}) == 2
    finally:
        rec.stop()


def test_receiver_rate_limit_token_bucket(tmp_path):
    rec = make_receiver(tmp_path, ingestion_rate_mb=0.001, burst_mb=1)
    try:
        half = _prof(lambda b, p: p["function"][0].update(name=b.s("z" * 600_000)))
        assert push(rec, half, compress=True)[0] == 200
        st, _, body = push(rec, half, compress=True)
        assert st == 429 and "push rate limit" in error_of(body)[1]
    finally:
        rec.stop()


@pytest.mark.parametrize("body,headers,status,code,part", [
    (b"\xff\xff\xff", PROTO, 400, "invalid_argument", "unmarshal"),
    (b"", PROTO, 400, "invalid_argument", "no profiles received"),
    (pw.encode_push_request([(LABELS, [])]), PROTO, 400, "invalid_argument",
     "no profiles received"),
    (b"not gzip at all", {"Content-Type": "application/proto", "Content-Encoding": "gzip"},
     400, "invalid_argument", "decompress"),
    (b"{not json", {"Content-Type": "application/json"}, 400, "invalid_argument", "unmarshal"),
    (push_body(pw.cpu_profile().encode()), {"Content-Type": "application/proto",
                                            "Connect-Protocol-Version": "2"},
     400, "invalid_argument", "Connect-Protocol-Version"),
    (push_body(pw.cpu_profile().encode()), {"Content-Type": "application/proto",
                                            "Content-Encoding": "zstd"},
     501, "unimplemented", 'unknown compression "zstd"'),
    (push_body(pw.cpu_profile().encode()), {"Content-Type": "application/proto",
                                            "Content-Encoding": "br"},
     501, "unimplemented", 'unknown compression "br"'),
], ids=["bad_proto", "empty", "series_without_samples", "bad_gzip_body", "bad_json",
        "protocol_version", "zstd", "brotli"])
def test_receiver_rejects_bad_push_requests(rec, body, headers, status, code, part):
    st, h, data = post(rec, PUSH, body, dict(headers))
    assert st == status, data
    assert h["content-type"] == "application/json"
    assert error_of(data)[0] == code and part in error_of(data)[1]


@pytest.mark.parametrize("ctype", ["application/x-protobuf", "application/octet-stream",
                                   "application/proto; charset=utf-8", "text/plain",
                                   "application/grpc", None])
def test_receiver_push_415_on_other_content_types(rec, ctype):
    headers = {} if ctype is None else {"Content-Type": ctype}
    st, h, body = post(rec, PUSH, push_body(pw.cpu_profile().encode()), headers)
    assert st == 415 and body == b"" and "application/proto" in h["accept-post"]
    assert rec.requests()[0]["status"] == 415


@pytest.mark.parametrize("ctype", ["Application/Proto", "application/json;charset=UTF-8",
                                   "application/json; charset=utf-8"])
def test_receiver_push_content_type_canonicalized_like_connect(rec, ctype):
    raw = pw.cpu_profile().encode()
    if "json" in ctype:
        body = json.dumps({"series": [{"labels": [{"name": n, "value": v} for n, v in LABELS],
                                       "samples": [{"raw_profile": base64.b64encode(raw)
                                                    .decode().rstrip("=")}]}]}).encode()
    else:
        body = push_body(raw)
    st, _, data = post(rec, PUSH, body, {"Content-Type": ctype})
    assert st == 200, data
    assert len(rec.profiles()) == 1


def test_receiver_methods_paths_ready(rec):
    assert post(rec, PUSH, None, {}, method="GET")[0] == 405
    st, h, _ = post(rec, PUSH, b"", {}, method="PUT")
    assert st == 405 and h["allow"] == "POST"
    assert post(rec, "/ready", None, {}, method="GET")[0] == 200
    assert post(rec, "/ready", b"", {}, method="POST")[0] == 405
    assert post(rec, "/nope", b"x", PROTO)[0] == 404
    assert post(rec, "/push.v1.PusherService/Other", b"", PROTO)[0] == 404
    assert [r["status"] for r in rec.requests()] == [405, 405, 200, 405, 404, 404]
    assert rec.wait_requests(2, timeout=1, path="/ready")[1]["status"] == 405
    with pytest.raises(TimeoutError):
        rec.wait_requests(7, timeout=0.2)


def test_receiver_require_auth(tmp_path):
    rec = make_receiver(tmp_path, require_auth="Bearer good")
    try:
        assert push(rec)[0] == 401
        assert push(rec, headers={**PROTO, "Authorization": "Bearer bad"})[0] == 401
        assert push(rec, headers={**PROTO, "Authorization": "Bearer good"})[0] == 200
        assert rec.requests()[0]["code"] == "unauthenticated"
    finally:
        rec.stop()


# --- /ingest -------------------------------------------------------------------------------
def _ingest(rec, query, body, ctype="binary/octet-stream"):
    return post(rec, "/ingest?" + query, body, {"Content-Type": ctype})


def test_receiver_ingest_raw_gzip_and_multipart(rec):
    raw = pw.cpu_profile().encode()
    q = "name=myapp%7Benv%3Dci%2Cregion%3Deu%7D&format=pprof&from=1&until=2&sampleRate=100" \
        "&spyName=pyroagent"
    st, _, body = _ingest(rec, q, raw)
    assert (st, body) == (200, b"")
    labels = {x["name"]: x["value"] for x in rec.requests()[0]["series"][0]}
    assert labels == {"__name__": "process_cpu", "__delta__": "false", "service_name": "myapp",
                      "pyroscope_spy": "pyroagent", "env": "ci", "region": "eu"}
    assert _ingest(rec, "name=myapp&format=pprof", gzip.compress(raw))[0] == 200
    assert post(rec, "/pyroscope/ingest?name=myapp&format=pprof", raw, {})[0] == 200
    boundary = "XyZboundary"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"profile\"; "
            f"filename=\"profile.pprof\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            ).encode() + gzip.compress(raw) + f"\r\n--{boundary}--\r\n".encode()
    st, _, body = _ingest(rec, "name=myapp.cpu&spyName=gospy", form,
                          f"multipart/form-data; boundary={boundary}")
    assert st == 200, body
    profs = rec.profiles()
    assert [p[1] for p in profs] == ["process_cpu"] * 4
    assert profs[3][0]["service_name"] == "myapp.cpu"
    for _, _, path in profs:
        assert "leaf_fn" in go_pprof_raw(path)


def test_receiver_ingest_ignores_content_encoding(rec):
    raw = gzip.compress(pw.cpu_profile().encode())
    st, _, _ = post(rec, "/ingest?name=app&format=pprof", raw,
                    {"Content-Type": "binary/octet-stream", "Content-Encoding": "gzip"})
    assert st == 200
    st, _, body = post(rec, "/ingest?name=app&format=pprof", b"\x28\xb5\x2f\xfd" + bytes(40),
                       {"Content-Type": "binary/octet-stream", "Content-Encoding": "zstd"})
    assert st == 422 and error_of(body)[0] == "unknown"


def test_receiver_ingest_memory_profile_name(rec):
    mem = pw.ProfileBuilder(sample_types=[("alloc_objects", "count"), ("alloc_space", "bytes")],
                            period_type=("space", "bytes"))
    mem.sample(["malloc_site", "main"], [2, 1024])
    assert _ingest(rec, "name=app&format=pprof", mem.encode())[0] == 200
    assert rec.profiles()[0][1] == "memory"


@pytest.mark.parametrize("query,body,ctype,status,part", [
    ("name=&format=pprof", None, None, 400, "service name is required"),
    ("format=pprof", None, None, 400, "service name is required"),
    ("name=bad%20app&format=pprof", None, None, 400, "invalid service name"),
    ("name=app%7Bbad-key%3Dv%7D&format=pprof", None, None, 400, "invalid label name"),
    ("name=app%7B%3Dv%7D&format=pprof", None, None, 400, "label name is required"),
    ("name=app&format=pprof", b"\xff" * 64, None, 422, ""),
    ("name=app&format=pprof", "old", None, 422, "outside of ingestion window"),
    ("name=app&format=pprof", "dash", None, 422, "sample type contains -"),
    ("name=app%7Bk%3D" + "v" * 2049 + "%7D&format=pprof", None, None, 422,
     "label value too long"),
    ("name=app&format=pprof", "big", None, 429, "push rate limit"),
    ("name=app&format=trie", None, None, 422, "not implemented"),
    ("name=app", None, None, 422, "not implemented"),
    ("name=app", "prev", "multipart/form-data; boundary=B", 422, "unsupported client version"),
    ("name=app", b"--B\r\nbroken", "multipart/form-data; boundary=B", 422, "multipart"),
], ids=["empty_name", "no_name", "space_in_name", "bad_tag", "empty_tag", "garbage", "old",
        "dash", "long_value", "over_burst", "trie", "groups", "prev_profile",
        "broken_multipart"])
def test_receiver_ingest_rejects(rec, query, body, ctype, status, part):
    if body is None:
        body = pw.cpu_profile().encode()
    elif body == "old":  # time_nanos 0: Pyroscope takes `from`, here two hours ago
        body = pw.encode_profile(_prof(_set(time_nanos=0)))
        query += f"&from={int(time.time()) - 7200}"
    elif body == "dash":
        body = pw.encode_profile(
            _prof(lambda b, p: p["sample_type"][0].update(type=b.s("cpu-time"))))
    elif body == "big":
        body = pw.encode_profile(
            _prof(lambda b, p: p["function"][0].update(name=b.s("x" * (2 * 2**20 + 1)))),
            compress=True)
    elif body == "prev":
        p = pw.cpu_profile().encode()
        body = (b"--B\r\nContent-Disposition: form-data; name=\"profile\"\r\n\r\n" + p
                + b"\r\n--B\r\nContent-Disposition: form-data; name=\"prev_profile\"\r\n\r\n"
                + p + b"\r\n--B--\r\n")
    st, h, data = _ingest(rec, query, body, ctype or "binary/octet-stream")
    assert st == status, data
    assert h["content-type"] == "application/json"
    assert part in error_of(data)[1]
    assert rec.profiles() == []
    assert rec.requests()[0]["status"] == status


# --- fault modes -----------------------------------------------------------------------------
def test_receiver_fault_fail_first(tmp_path):
    rec = make_receiver(tmp_path, fail_first=2)
    try:
        got = [push(rec) for _ in range(3)]
        assert [g[0] for g in got] == [503, 503, 200]
        assert error_of(got[0][2])[0] == "unavailable"
        assert "retry-after" not in got[0][1]
        reqs = rec.requests()
        assert [r["fault"] for r in reqs] == ["fail_first", "fail_first", None]
        # faulted requests still show what was sent
        assert reqs[0]["series"][0][0] == {"name": "__name__", "value": "process_cpu"}
        assert reqs[0]["ids"] == ["id-1"]
        assert len(rec.profiles()) == 1
    finally:
        rec.stop()


def test_receiver_fault_status_with_retry_after(tmp_path):
    rec = make_receiver(tmp_path, status=429, retry_after=3)
    try:
        st, h, body = push(rec)
        assert st == 429 and h["retry-after"] == "3"
        assert error_of(body)[0] == "resource_exhausted"
        assert post(rec, "/ready", None, {}, method="GET")[0] == 429
        rec.set_mode(status=503, retry_after="Wed, 21 Oct 2015 07:28:00 GMT")
        st, h, body = push(rec)
        assert st == 503 and h["retry-after"] == "Wed, 21 Oct 2015 07:28:00 GMT"
        rec.set_mode(status=400)
        st, h, body = push(rec)
        assert st == 400 and "retry-after" not in h and error_of(body)[0] == "invalid_argument"
        rec.set_mode(status=None)
        assert push(rec)[0] == 200
    finally:
        rec.stop()


def test_receiver_fault_delay(tmp_path):
    rec = make_receiver(tmp_path, delay=0.6)
    try:
        t = time.monotonic()
        assert push(rec)[0] == 200
        assert time.monotonic() - t >= 0.6
        rec.set_mode(delay=0)
        t = time.monotonic()
        assert push(rec)[0] == 200
        assert time.monotonic() - t < 0.5
    finally:
        rec.stop()


def _raw_exchange(rec, body=None):
    """Sends one push over a raw socket; returns the reply bytes, or the
    exception the read raised."""
    body = body if body is not None else push_body(pw.cpu_profile().encode())
    s = socket.create_connection(("127.0.0.1", rec.port), timeout=10)
    try:
        s.sendall(f"POST {PUSH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/proto\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except OSError as e:
                return e
            if not chunk:
                return out
            out += chunk
    finally:
        s.close()


def test_receiver_fault_close_reset_garbage(tmp_path):
    rec = make_receiver(tmp_path, close=True)
    try:
        assert _raw_exchange(rec) == b""  # FIN without a byte of answer
        with pytest.raises(http.client.RemoteDisconnected):
            push(rec)
        rec.set_mode(close="reset")
        assert isinstance(_raw_exchange(rec), ConnectionResetError)
        rec.set_mode(close=False, garbage=True)
        out = _raw_exchange(rec)
        assert out.startswith(b"\x00") and b"HTTP/" not in out
        with pytest.raises(http.client.BadStatusLine):
            push(rec)
        rec.set_mode(garbage=False)
        assert push(rec)[0] == 200
        reqs = rec.requests()
        assert [r["fault"] for r in reqs] == ["close", "close", "reset", "garbage", "garbage",
                                              None]
        assert [r["status"] for r in reqs] == [0, 0, 0, 0, 0, 200]
        assert reqs[0]["ids"] == ["id-1"]
        assert len(rec.profiles()) == 1
    finally:
        rec.stop()


def test_receiver_fault_down_for_then_up(tmp_path):
    rec = make_receiver(tmp_path, down_for=0.6, retry_after=1)
    try:
        st, h, _ = push(rec)
        assert st == 503 and h["retry-after"] == "1"
        time.sleep(0.7)
        assert push(rec)[0] == 200
        rec.set_mode(down_for=30)
        assert push(rec)[0] == 503
        rec.set_mode(down_for=None)
        assert push(rec)[0] == 200
        rec.set_mode(fail_first=1)
        assert [push(rec)[0] for _ in range(2)] == [503, 200]
        assert [r["fault"] for r in rec.requests()] == ["down_for", None, "down_for", None,
                                                        "fail_first", None]
    finally:
        rec.stop()


def test_receiver_set_mode_refuses_unknown():
    with pytest.raises(TypeError):
        Receiver().set_mode(explode=True)
    with pytest.raises(ValueError):
        Receiver(close="sometimes")


# --- records, secrets, HTTP/1.1 ------------------------------------------------------------------
def test_receiver_redacts_secrets(rec):
    basic = base64.b64encode(b"alice:s3cret-pass").decode()
    push(rec, headers={**PROTO, "Authorization": f"Basic {basic}", "X-Scope-OrgID": "team-a",
                       "Cookie": "session=s3cret-cookie", "X-Extra": "yes",
                       "User-Agent": "pyroagent/0.1.0"})
    push(rec, headers={**PROTO, "Authorization": "Bearer s3cret-token"})
    push(rec, headers={**PROTO, "Authorization": "s3cret-bare"})
    h = [{k.lower(): v for k, v in r["headers"].items()} for r in rec.requests()]
    assert h[0]["authorization"] == "Basic <redacted>"
    assert h[0]["cookie"] == "<redacted>"
    assert h[0]["x-scope-orgid"] == "team-a" and h[0]["x-extra"] == "yes"
    assert h[0]["user-agent"] == "pyroagent/0.1.0"
    assert h[1]["authorization"] == "Bearer <redacted>"
    assert h[2]["authorization"] == "<redacted>"
    text = (rec.dir / "requests.jsonl").read_text()
    for secret in (basic, "s3cret"):
        assert secret not in text
    assert "s3cret" not in json.dumps(rec.requests())


def test_receiver_keep_alive_two_requests_one_connection(rec):
    c = http.client.HTTPConnection("127.0.0.1", rec.port, timeout=10)
    try:
        for sid in ("k1", "k2"):
            c.request("POST", PUSH, push_body(pw.cpu_profile().encode(), sid=sid), PROTO)
            r = c.getresponse()
            assert r.status == 200 and r.read() == b""
            assert r.getheader("Connection") != "close"
        sock = c.sock
        c.request("GET", "/ready")
        assert c.getresponse().read() == b"ready\n"
        assert c.sock is sock
    finally:
        c.close()
    peers = {r["peer"] for r in rec.requests()}
    assert len(peers) == 1 and len(rec.requests()) == 3


def test_receiver_chunked_body_and_expect_continue(rec):
    body = push_body(pw.cpu_profile().encode(), sid="chunked")
    c = http.client.HTTPConnection("127.0.0.1", rec.port, timeout=10)
    try:
        c.request("POST", PUSH, iter([body[:7], body[7:50], body[50:]]),
                  {**PROTO, "Transfer-Encoding": "chunked"}, encode_chunked=True)
        r = c.getresponse()
        assert r.status == 200, r.read()
        r.read()
    finally:
        c.close()
    s = socket.create_connection(("127.0.0.1", rec.port), timeout=10)
    try:
        s.sendall(f"POST {PUSH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/proto\r\n"
                  f"Expect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        assert s.recv(100).startswith(b"HTTP/1.1 100")
        s.sendall(body)
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 200")
    finally:
        s.close()
    assert [r["ids"] for r in rec.requests()] == [["chunked"], ["chunked"]]
    assert [r["status"] for r in rec.requests()] == [200, 200]


def test_receiver_stop_drops_idle_keep_alive_connections(tmp_path):
    rec = make_receiver(tmp_path)
    c = http.client.HTTPConnection("127.0.0.1", rec.port, timeout=10)
    c.request("GET", "/ready")
    assert c.getresponse().read() == b"ready\n"
    t = time.monotonic()
    rec.stop()
    assert time.monotonic() - t < 5
    c.close()


# --- CLI ----------------------------------------------------------------------------------------
def test_receiver_cli(tmp_path):
    d = tmp_path / "cli"
    p = subprocess.Popen([sys.executable, str(HERE / "receiver.py"), "--port", "0", "--dir",
                          str(d), "--fail-first", "1", "--retry-after", "2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line + p.stderr.read()
        port = int(line.strip().rsplit(":", 1)[1])

        class R:
            pass
        r = R()
        r.port = port
        st, h, _ = push(r)
        assert st == 503 and h["retry-after"] == "2"
        assert push(r)[0] == 200
        assert post(r, "/_receiver/mode", json.dumps({"status": 500}).encode(),
                    {"Content-Type": "application/json"})[0] == 200
        assert push(r)[0] == 500
        st, _, body = post(r, "/_receiver/requests", None, {}, method="GET")
        assert [x["status"] for x in json.loads(body)] == [503, 200, 500]
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=10)
        p.stdout.close()
        p.stderr.close()
    assert p.returncode == 0
    lines = (d / "requests.jsonl").read_text().splitlines()
    assert [json.loads(x)["status"] for x in lines] == [503, 200, 500]
    assert (d / "profiles" / "1.pb.gz").exists()

#!/usr/bin/env python3
"""A Grafana Pyroscope ingest receiver for tests (Python standard library only).

It accepts uploads the way Pyroscope v2.2 reads them and refuses what
Pyroscope refuses, with the same HTTP status; it records every request and
stores every accepted profile, and it can misbehave on purpose (fault modes)
so delivery and retry code can be tested.

Entry points (as in Pyroscope):

- ``POST /push.v1.PusherService/Push`` - Connect unary, ``application/proto``
  (or ``application/json``, Connect's other default codec); body
  ``Content-Encoding: gzip`` or identity; each ``raw_profile`` is pprof,
  gzipped or plain (the gzip magic is sniffed).
- ``POST /ingest?name=app{k=v}&format=pprof&from=&until=&sampleRate=&spyName=``
  (also ``/pyroscope/ingest``)
  with a raw pprof body (gzipped or not), or, without ``format``, a
  ``multipart/form-data`` body whose ``profile`` part is the pprof.
- ``GET /ready`` -> 200. Anything else -> 404.

Statuses, as Pyroscope v2.2 answers them (read from its source:
pkg/distributor/distributor.go, pkg/validation/validate.go,
pkg/ingester/pyroscope/ingest_handler.go, connect-go's handler):

  Push: 400 invalid labels/profile, undecodable PushRequest, bad gzip body,
  Connect-Protocol-Version other than 1, no profiles; 415 content type other
  than application/proto or application/json (empty body, Accept-Post);
  501 a Content-Encoding other than gzip/identity (zstd, br...); 405 a method
  other than POST; 429 over the ingestion rate/burst limit or a body over the
  message limit; 500 ("unknown") a raw_profile that is not gzip+protobuf at
  all - Pyroscope does not wrap that error in a Connect code, so it answers
  500, not 400. Error bodies are ``{"code": ..., "message": ...}`` JSON.
  /ingest: 400 bad ``name``; 413 body too large; 422 anything invalid;
  429 rate limited. /ingest ignores Content-Encoding (Pyroscope does not
  decode it there): only the gzip magic of the body itself is sniffed.

Checks applied to every profile (Pyroscope's, in its order): sample types
present; ``time_nanos`` inside (now - 1h, now + 10m) when > 0; decompressed
size <= 4 MiB (400); <= 16000 samples; <= 100 labels per sample; location
and function ids != 0; ``len(value) == len(sample_type)``; string_table[0]
== ""; string indexes of sample types, sample labels, functions and mappings
in range; no '-' in sample type names; every string valid UTF-8. Series
labels (series labels plus each distinct set of string sample labels, bar
trace_id/span_id/profile_id): at least one; <= 30 names; ``__name__`` set and
valid UTF-8; ``service_name`` set; names <= 1024 bytes, values <= 2048; names
``[a-zA-Z_.][a-zA-Z0-9_.]*`` (dots become underscores, so ``a.b`` and
``a_b`` collide); values valid UTF-8; no duplicate names. Labels with an
empty value are dropped first, as Pyroscope does. Rate limit: a token bucket
of 4 MiB/s with a 2 MiB burst over labels + uncompressed profile bytes, so a
single profile over 2 MiB is always answered 429 (and a warning is recorded).

Strict mode (default ``strict=True``) adds checks Pyroscope does not make but
a correct agent must pass; their messages start with ``strict:`` (status 400):
``service_name`` present (Pyroscope would substitute "unknown_service"),
``time_nanos`` > 0 (Pyroscope would use the arrival time), every id reference
resolves (sample -> location, location -> mapping, line -> function; Pyroscope
silently drops what does not), ids unique and non-zero (mappings too), every
other string index (units, period type, num_unit, comments...) in range and
not negative. Softer findings go to the record's ``warnings`` list: no period
type or period, duration_nanos <= 0, no samples, stacks deeper than 1000
frames or strings longer than 65535 bytes (Pyroscope truncates those).

Records: ``<dir>/requests.jsonl`` gets one JSON object per request (see
``Receiver.requests``); accepted profiles are stored as
``<dir>/profiles/<n>.pb.gz`` (gzipped if they came plain), with
``<n>.json`` holding their series labels.

Fault modes (constructor keywords, ``set_mode()`` at run time, CLI flags),
checked in this order for every request once its body is read:
``delay`` seconds of sleep first; ``close`` (True: close without answering;
"reset": reset the connection); ``garbage`` (answer non-HTTP bytes);
``down_for`` seconds -> 503; ``fail_first`` N -> the next N requests 503;
``status`` CODE -> every request answered CODE with a JSON error body.
``retry_after`` adds ``Retry-After: <value>`` to every 429 and 503.
``require_auth`` (the exact Authorization value expected) -> 401 otherwise.

CLI: ``python3 receiver.py --port 0 --dir D [--fail-first N] ...`` prints
``listening on http://127.0.0.1:PORT`` first and serves until SIGTERM or
SIGINT. A process started that way can be steered over HTTP:
``POST /_receiver/mode`` (JSON object of modes) and ``GET
/_receiver/requests``; neither is recorded nor subject to faults.
"""
import argparse
import base64
import binascii
import bisect
import copy
import datetime
import gzip
import http.server
import io
import json
import os
import pathlib
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import protowire  # noqa: E402

PUSH_PATH = "/push.v1.PusherService/Push"
INGEST_PATHS = ("/ingest", "/pyroscope/ingest")
CONTROL_PREFIX = "/_receiver/"

# Pyroscope v2.2 defaults (pkg/validation/limits.go).
MIB = 1 << 20
MAX_LABEL_NAMES = 30
MAX_LABEL_NAME_LEN = 1024
MAX_LABEL_VALUE_LEN = 2048
MAX_PROFILE_SIZE = 4 * MIB
MAX_SAMPLES = 16000
MAX_SAMPLE_LABELS = 100
MAX_STACK_DEPTH = 1000
MAX_SYMBOL_LEN = 65535
REJECT_OLDER_MS = 3600 * 1000
REJECT_NEWER_MS = 600 * 1000
INGESTION_RATE_MB = 4.0
INGESTION_BURST_MB = 2.0
BODY_LIMIT = 256 * MIB
SERVICE_FALLBACK = b"unknown_service"
# Sample labels that do not become series labels (pkg/model/pprofsplit).
NON_SERIES_SAMPLE_LABELS = (b"trace_id", b"span_id", b"profile_id")
# Connect's codecs: content types the Push handler accepts.
CONNECT_CONTENT_TYPES = {"application/proto": "proto", "application/json": "json",
                         "application/json; charset=utf-8": "json"}
# Headers whose value is a secret; for the first set the scheme word stays.
SECRET_SCHEME_HEADERS = {"authorization", "proxy-authorization"}
SECRET_HEADERS = {"cookie", "set-cookie", "x-api-key", "api-key", "x-auth-token"}
# Pyroscope's HTTP status -> Connect code (pkg/util/connectgrpc HTTPToCode).
HTTP_TO_CODE = {400: "invalid_argument", 401: "unauthenticated", 403: "permission_denied",
                404: "unimplemented", 412: "failed_precondition", 413: "invalid_argument",
                429: "resource_exhausted", 431: "resource_exhausted", 499: "canceled",
                502: "unavailable", 503: "unavailable", 504: "deadline_exceeded"}
CODE_TO_HTTP = {"invalid_argument": 400, "unauthenticated": 401, "permission_denied": 403,
                "not_found": 404, "resource_exhausted": 429, "unimplemented": 501,
                "unavailable": 503, "deadline_exceeded": 504, "unknown": 500, "internal": 500}
# /ingest: sample type display names (pkg/og/storage/tree DefaultSampleTypeMapping).
DEFAULT_SAMPLE_TYPE_DISPLAY = {"samples": "cpu", "goroutine": "goroutines",
                               "contentions": "mutex_count", "delay": "mutex_duration"}
GARBAGE = b"\x00\x17garbage, not HTTP at all\r\n\xff\xfe\r\n\r\n"


class Reject(Exception):
    """A refusal: HTTP status, Connect code and message."""

    def __init__(self, status, message, code=None):
        super().__init__(message)
        self.status = status
        self.code = code or HTTP_TO_CODE.get(status, "unknown")
        self.message = message


def _bad(message):
    return Reject(400, message, "invalid_argument")


class _TooLarge(Exception):
    """A body over the limit; `drained` when it was read and thrown away, so
    the client saw its upload complete and the connection can stay open."""

    def __init__(self, size, limit, drained=False):
        super().__init__(f"message size {size} is larger than configured max {limit}")
        self.size = size
        self.limit = limit
        self.drained = drained


# A body over the limit is read and discarded up to this many extra bytes, so
# the client gets the answer instead of a broken pipe; beyond it we hang up.
DRAIN_LIMIT = 64 * MIB


# --- small helpers ------------------------------------------------------------
def _text(b):
    """Bytes to a str for records and messages; invalid UTF-8 shown escaped."""
    if isinstance(b, str):
        return b
    return bytes(b).decode("utf-8", "backslashreplace")


def _utf8_ok(b):
    try:
        bytes(b).decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def canonical_content_type(value):
    """connect-go's canonicalizeContentType: media type and parameter names
    lowercased, charset value lowercased, other parameters kept."""
    parts = [p.strip() for p in (value or "").split(";")]
    base = parts[0].lower()
    params = []
    for p in parts[1:]:
        if not p:
            continue
        if "=" not in p:
            return (value or "").strip()  # unparsable: compared as sent
        k, v = p.split("=", 1)
        k = k.strip().lower()
        v = v.strip().strip('"')
        params.append((k, v.lower() if k == "charset" else v))
    return "; ".join([base] + [f"{k}={v}" for k, v in sorted(params)])


def _labels_string(ls):
    """Pyroscope's LabelPairsString: {a="b", c="d"}."""
    return "{" + ", ".join(f"{_text(n)}={json.dumps(_text(v))}" for n, v in ls) + "}"


def _labels_get(ls, name):
    for n, v in ls:
        if n == name:
            return v
    return b""


def _fmt_ms(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")


def _humanize_bytes(n):
    """go-humanize Bytes (SI units), as in Pyroscope's size-limit message."""
    units = ["B", "kB", "MB", "GB", "TB"]
    if n < 10:
        return f"{n} B"
    e = 0
    v = float(n)
    while v >= 1000 and e < len(units) - 1:
        v /= 1000
        e += 1
    return f"{v:.0f} {units[e]}" if v >= 10 else f"{v:.1f} {units[e]}"


def _humanize_ibytes(n):
    units = ["B", "KiB", "MiB", "GiB"]
    if n < 10:
        return f"{n} B"
    e = 0
    v = float(n)
    while v >= 1024 and e < len(units) - 1:
        v /= 1024
        e += 1
    return f"{v:.0f} {units[e]}" if v >= 10 else f"{v:.1f} {units[e]}"


def redact_header(name, value):
    """Hides secrets: `Authorization: Basic <redacted>` keeps the scheme word."""
    low = name.lower()
    if low in SECRET_SCHEME_HEADERS:
        parts = value.strip().split(None, 1)
        return f"{parts[0]} <redacted>" if len(parts) == 2 else "<redacted>"
    if low in SECRET_HEADERS:
        return "<redacted>"
    return value


def redact_headers(items):
    out = {}
    for name, value in items:
        value = redact_header(name, value)
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


class TokenBucket:
    """golang.org/x/time/rate AllowN: `rate` bytes/s, `burst` bytes; a request
    larger than the burst is never allowed."""

    def __init__(self, rate, burst):
        self.rate = float(rate)
        self.burst = int(burst)
        self.tokens = float(burst)
        self.last = time.monotonic()
        self.lock = threading.Lock()

    def allow(self, n):
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if n > self.burst or self.tokens < n:
                return False
            self.tokens -= n
            return True


# --- raw profile decoding -----------------------------------------------------
def decode_raw_profile(raw, limit=MAX_PROFILE_SIZE):
    """Decodes a raw_profile as Pyroscope's RawFromBytesWithLimit does.

    Returns (profile dict, uncompressed bytes, was_gzip). Raises Reject: 400
    over the size limit; 500 ("unknown") for anything undecodable, which is
    what Pyroscope answers for those (the error carries no Connect code).
    """
    raw = bytes(raw)
    was_gzip = False
    # Go's gzip.NewReader: fewer than 10 header bytes is an I/O error, not
    # "not gzip"; a wrong magic or method means plain data.
    if len(raw) < 10:
        msg = "EOF" if not raw else "unexpected EOF"
        raise Reject(500, f"gzip reset: {msg}", "unknown")
    if raw[0] == 0x1F and raw[1] == 0x8B and raw[2] == 8:
        was_gzip = True
        try:
            data, over = protowire.gunzip_limited(raw, limit)
        except protowire.WireError as e:
            raise Reject(500, f"copy to buffer: {e}", "unknown") from None
    else:
        data = raw
        over = len(data) > limit
    if over:
        raise _bad("uncompressed profile payload size exceeds limit of "
                   f"{_humanize_bytes(limit)}")
    try:
        prof = protowire.decode_profile(data)
    except protowire.WireError as e:
        raise Reject(500, str(e), "unknown") from None
    return prof, len(data), was_gzip


# --- label validation (pkg/validation.ValidateLabels) ----------------------------
def _sanitize_legacy_name(name):
    """Returns (ok, sanitized): legacy names [a-zA-Z_.][a-zA-Z0-9_.]*, dots
    replaced by underscores."""
    if not name:
        return False, name
    has_dots = False
    for i, c in enumerate(name):
        if (0x61 <= c <= 0x7A) or (0x41 <= c <= 0x5A) or c == 0x5F or (0x30 <= c <= 0x39 and i):
            continue
        if c == 0x2E:
            has_dots = True
            continue
        return False, name
    return True, name.replace(b".", b"_") if has_dots else name


def validate_labels(ls, strict=False):
    """Validates series labels (list of (name bytes, value bytes)) as
    Pyroscope does; returns the sorted, sanitized list or raises Reject.
    `strict` only changes the message for a missing service_name, which
    Pyroscope never sees (it substitutes "unknown_service" first)."""
    if not ls:
        raise _bad("error at least one label pair is required per profile")
    ls = sorted(ls, key=lambda kv: kv[0])
    if len(ls) > MAX_LABEL_NAMES:
        raise _bad(f"profile series '{_labels_string(ls)}' has {len(ls)} label names; "
                   f"limit {MAX_LABEL_NAMES}")
    metric = _labels_get(ls, b"__name__")
    if not metric or not _utf8_ok(metric):
        raise _bad(f"invalid labels '{_labels_string(ls)}' with error: invalid metric name")
    if not _labels_get(ls, b"service_name"):
        prefix = "strict: Pyroscope would use service_name=\"unknown_service\" here: " \
            if strict else ""
        raise _bad(f"{prefix}invalid labels '{_labels_string(ls)}' with error: "
                   "service name is not provided")
    last = b""
    idx = 0
    while idx < len(ls):
        name, value = ls[idx]
        if len(name) > MAX_LABEL_NAME_LEN:
            raise _bad(f"profile with labels '{_labels_string(ls)}' has label name too long: "
                       f"'{_text(name)}'")
        if len(value) > MAX_LABEL_VALUE_LEN:
            raise _bad(f"profile with labels '{_labels_string(ls)}' has label value too long: "
                       f"'{_text(value)}'")
        ok, new = _sanitize_legacy_name(name)
        if not ok:
            raise _bad(f"invalid labels '{_labels_string(ls)}' with error: "
                       f"invalid label name '{_text(name)}'")
        if new != name:
            rest = ls[:idx] + ls[idx + 1:]
            names = [n for n, _ in rest]
            ins = bisect.bisect_left(names, new)
            if ins < len(rest) and rest[ins][0] == new:
                if rest[ins][1] != value:
                    raise _bad(f"profile with labels '{_labels_string(ls)}' has duplicate label "
                               f"name '{_text(new)}' after label name sanitization from "
                               f"'{_text(name)}'")
                ls = rest
            else:
                rest.insert(ins, (new, value))
                ls = rest
                idx = min(ins, idx)
            last = ls[idx - 1][0] if 0 < idx <= len(ls) else b""
            continue
        if not _utf8_ok(value):
            raise _bad(f"invalid labels '{_labels_string(ls)}' with error: "
                       f"invalid label value '{_text(value)}'")
        if name == last:
            raise _bad(f"profile with labels '{_labels_string(ls)}' has duplicate label name: "
                       f"'{_text(name)}'")
        last = name
        idx += 1
    return ls


def _build_labels(base, added):
    """Pyroscope's LabelsBuilder: base labels with empty values are dropped;
    sample labels are added only when the name is not set yet."""
    dels = {n for n, v in base if v == b""}
    add = []

    def get(n):
        for a, v in add:
            if a == n:
                return v
        if n in dels:
            return b""
        return _labels_get(base, n)

    for n, v in added:
        if get(n) != b"":
            continue
        if v == b"":
            add = [(a, av) for a, av in add if a != n]
            dels.add(n)
            continue
        add.append((n, v))
    names_added = {a for a, _ in add}
    out = [(n, v) for n, v in base if n not in dels and n not in names_added]
    return out + add


def series_label_sets(prof, labels):
    """The label sets Pyroscope validates for one profile: the series labels
    merged with each distinct set of string sample labels (pprofsplit)."""
    st = prof["string_table"]
    groups = []
    seen = set()
    for s in prof["sample"]:
        key = []
        for lab in s["label"]:
            k = st[lab["key"]]
            if k in NON_SERIES_SAMPLE_LABELS or lab["str"] <= 0:
                continue
            key.append((k, st[lab["str"]]))
        t = tuple(key)
        if t not in seen:
            seen.add(t)
            groups.append(t)
    if not groups:
        groups = [()]
    return [_build_labels(labels, g) for g in groups]


# --- profile validation (pkg/validation.ValidateProfile + strict checks) ----------
def validate_profile(prof, size, labels, now_ns, strict):
    """Raises Reject(400) for what Pyroscope refuses (and, when strict, for
    what a correct agent never sends). Returns a list of warnings."""
    warnings = []
    ls = _labels_string(labels)
    st = prof["string_table"]
    nst = len(st)
    samples = prof["sample"]
    if not prof["sample_type"]:
        raise _bad("empty profile")
    t = prof["time_nanos"]
    if t > 0:
        t_ms = t // 1_000_000
        now_ms = now_ns // 1_000_000
        lo, hi = now_ms - REJECT_OLDER_MS, now_ms + REJECT_NEWER_MS
        if not (lo < t_ms < hi):
            raise _bad(f"profile with labels '{ls}' is outside of ingestion window (profile "
                       f"timestamp: {_fmt_ms(t_ms)}, the ingestion window starts at "
                       f"{_fmt_ms(lo)} and ends at {_fmt_ms(hi)})")
    elif strict:
        raise _bad(f"strict: time_nanos is {t} (Pyroscope would use the arrival time)")
    if size > MAX_PROFILE_SIZE:
        raise _bad(f"the profile with labels '{ls}' exceeds the size limit "
                   f"(max_profile_size_byte, actual: {size}, limit: {MAX_PROFILE_SIZE})")
    if len(samples) > MAX_SAMPLES:
        raise _bad(f"the profile with labels '{ls}' exceeds the samples count limit "
                   f"(max_profile_stacktrace_samples, actual: {len(samples)}, "
                   f"limit: {MAX_SAMPLES})")
    deepest = 0
    for s in samples:
        deepest = max(deepest, len(s["location_id"]))
        if len(s["label"]) > MAX_SAMPLE_LABELS:
            raise _bad(f"the profile with labels '{ls}' exceeds the sample labels limit "
                       f"(max_profile_stacktrace_sample_labels, actual: {len(s['label'])}, "
                       f"limit: {MAX_SAMPLE_LABELS})")
    if deepest > MAX_STACK_DEPTH:
        warnings.append(f"stack of {deepest} frames: Pyroscope keeps the {MAX_STACK_DEPTH} "
                        "frames nearest the root")
    longest = max((len(x) for x in st), default=0)
    if longest > MAX_SYMBOL_LEN:
        warnings.append(f"string of {longest} bytes: Pyroscope truncates strings to "
                        f"{MAX_SYMBOL_LEN}")
    for loc in prof["location"]:
        if loc["id"] == 0:
            raise _bad("location id is 0")
    for fn in prof["function"]:
        if fn["id"] == 0:
            raise _bad("function id is 0")
    ntypes = len(prof["sample_type"])
    for s in samples:
        if len(s["value"]) != ntypes:
            raise _bad("sample value length mismatch")
    # validateStringTableAccess. Pyroscope compares `int(i) >= len`: a
    # negative index passes there and crashes later; refused here.
    if nst == 0 or st[0] != b"":
        raise _bad("string 0 should be empty string")

    def out_of_range(i):
        return i < 0 or i >= nst

    for vt in prof["sample_type"]:
        if out_of_range(vt["type"]):
            raise _bad("sample type type string index out of range")
    for s in samples:
        for lab in s["label"]:
            if out_of_range(lab["str"]) or out_of_range(lab["key"]):
                raise _bad("sample label string index out of range")
    for fn in prof["function"]:
        if out_of_range(fn["name"]):
            raise _bad("function name string index out of range")
        if out_of_range(fn["system_name"]):
            raise _bad("function system name index string out of range")
        if out_of_range(fn["filename"]):
            raise _bad("function file name string index out of range")
    for m in prof["mapping"]:
        if out_of_range(m["filename"]):
            raise _bad("mapping file name string index out of range")
        if out_of_range(m["build_id"]):
            raise _bad("mapping build id string index out of range")
    for vt in prof["sample_type"]:
        if b"-" in st[vt["type"]]:
            raise _bad("sample type contains -")
    for x in st:
        if not _utf8_ok(x):
            raise _bad(f"invalid utf8 string hex: {bytes(x).hex()}")
    if strict:
        _strict_profile_checks(prof)
    if prof["period_type"] is None:
        warnings.append("no period_type")
    if prof["period"] <= 0:
        warnings.append(f"period is {prof['period']}")
    if prof["duration_nanos"] <= 0:
        warnings.append(f"duration_nanos is {prof['duration_nanos']}")
    if not samples:
        warnings.append("no samples: Pyroscope ingests nothing from this profile")
    return warnings


def _strict_profile_checks(prof):
    st = prof["string_table"]
    nst = len(st)

    def index(i, what):
        if i < 0 or i >= nst:
            raise _bad(f"strict: {what} string index {i} out of range "
                       f"(string table has {nst} entries)")

    for vt in prof["sample_type"]:
        index(vt["unit"], "sample type unit")
    if prof["period_type"] is not None:
        index(prof["period_type"]["type"], "period type")
        index(prof["period_type"]["unit"], "period unit")
    for s in prof["sample"]:
        for lab in s["label"]:
            index(lab["num_unit"], "sample label num_unit")
    for c in prof["comment"]:
        index(c, "comment")
    for field in ("drop_frames", "keep_frames", "default_sample_type", "doc_url"):
        index(prof[field], field)

    def ids(items, what, zero_ok=False):
        seen = set()
        for it in items:
            i = it["id"]
            if i == 0 and not zero_ok:
                raise _bad(f"strict: {what} id is 0")
            if i in seen:
                raise _bad(f"strict: duplicate {what} id {i}")
            seen.add(i)
        return seen

    mappings = ids(prof["mapping"], "mapping")
    functions = ids(prof["function"], "function")
    locations = ids(prof["location"], "location")
    for loc in prof["location"]:
        if loc["mapping_id"] != 0 and loc["mapping_id"] not in mappings:
            raise _bad(f"strict: location {loc['id']} refers to missing mapping "
                       f"{loc['mapping_id']}")
        for line in loc["line"]:
            if line["function_id"] not in functions:
                raise _bad(f"strict: location {loc['id']} line refers to missing function "
                           f"{line['function_id']}")
    for s in prof["sample"]:
        for lid in s["location_id"]:
            if lid not in locations:
                raise _bad(f"strict: sample refers to missing location {lid}")


def _value_type(prof, vt):
    if vt is None:
        return None
    st = prof["string_table"]

    def get(i):
        return _text(st[i]) if 0 <= i < len(st) else f"<{i}>"

    return f"{get(vt['type'])}/{get(vt['unit'])}"


def describe_profile(prof):
    """Summary fields for the request record."""
    return {
        "sample_types": [_value_type(prof, vt) for vt in prof["sample_type"]],
        "samples": len(prof["sample"]),
        "period_type": _value_type(prof, prof["period_type"]),
        "period": prof["period"],
        "time_nanos": prof["time_nanos"],
        "duration_nanos": prof["duration_nanos"],
    }


# --- /ingest helpers -------------------------------------------------------------
def _label_rune_ok(r):
    return r.isascii() and (r.isalnum() or r in "_.")


def parse_labelset(name):
    """pyroscope api/model/labelset.Parse: `app{k=v,k2=v2}` -> dict
    (app under __name__). Raises ValueError with Pyroscope's message."""
    labels = {}
    state = 0  # 0 name, 1 tag set, 2 tag value, 3 done
    key = []
    value = []
    for r in name + "{":
        if state == 0:
            if r == "{":
                state = 1
                svc = "".join(value).strip()
                if not svc:
                    raise ValueError("service name is required")
                for c in svc:
                    if not (_label_rune_ok(c) or c in "-/"):
                        raise ValueError(f"invalid service name: {svc}: character is not "
                                         f"allowed: {c!r}")
                labels["__name__"] = svc
            else:
                value.append(r)
        elif state == 1:
            if r == "}":
                state = 3
            elif r == "=":
                state = 2
                value = []
            else:
                key.append(r)
        elif state == 2:
            if r in ",}":
                state = 1
                k = "".join(key).strip()
                if k != "__name__":
                    if not k:
                        raise ValueError("label name is required")
                    for c in k:
                        if not _label_rune_ok(c):
                            raise ValueError(f"invalid label name: {k}: character is not "
                                             f"allowed: {c!r}")
                labels[k] = "".join(value).strip()
                key = []
            else:
                value.append(r)
    return labels


def parse_attime(s, now):
    """pkg/og/util/attime.Parse -> unix seconds (float)."""
    s = s.strip().replace("_", "").replace(",", "").replace(" ", "")
    if s.isdigit() and s.isascii():
        if len(s) == 8:
            try:
                d = datetime.datetime.strptime(s, "%Y%m%d").replace(tzinfo=datetime.timezone.utc)
                return d.timestamp()
            except ValueError:
                pass
        v = int(s)
        return {13: v / 1e3, 16: v / 1e6, 19: v / 1e9}.get(len(s), float(v))
    i = s.find("+")
    if i < 0:
        i = s.find("-")
    offset = s[i:] if i >= 0 else ""
    if not offset:
        return now
    sign = -1 if offset[0] == "-" else 1
    offset = offset[1:] if offset[0] in "+-" else offset
    total = 0
    units = [("s", 1), ("mon", 2592000), ("M", 2592000), ("min", 60), ("m", 60), ("h", 3600),
             ("d", 86400), ("w", 604800), ("y", 31536000)]
    while offset:
        j = 0
        while j < len(offset) and offset[j].isdigit():
            j += 1
        num = int(offset[:j] or 0)
        offset = offset[j:]
        k = 0
        while k < len(offset) and not offset[k].isdigit():
            k += 1
        unit = offset[:k]
        offset = offset[k:]
        mult = next((m for p, m in units if unit.startswith(p)), 0)
        total += num * sign * mult
    return now + total


def parse_multipart(body, content_type):
    """Returns {field name: bytes} of a multipart/form-data body (first
    occurrence wins). Raises ValueError when malformed."""
    params = {}
    for piece in content_type.split(";")[1:]:
        if "=" in piece:
            k, v = piece.split("=", 1)
            params[k.strip().lower()] = v.strip().strip('"')
    boundary = params.get("boundary")
    if not boundary:
        raise ValueError("no multipart boundary param in Content-Type")
    delim = b"--" + boundary.encode("latin-1")
    pos = body.find(delim)
    if pos < 0:
        raise ValueError("multipart: NextPart: EOF")
    fields = {}
    while True:
        pos += len(delim)
        if body[pos:pos + 2] == b"--":
            return fields
        eol = body.find(b"\n", pos)
        if eol < 0:
            raise ValueError("multipart: NextPart: EOF")
        pos = eol + 1
        hend = body.find(b"\r\n\r\n", pos)
        if hend < 0:
            raise ValueError("multipart: malformed MIME header")
        headers = body[pos:hend].decode("latin-1")
        pos = hend + 4
        nxt = body.find(b"\r\n" + delim, pos)
        if nxt < 0:
            raise ValueError("multipart: NextPart: EOF")
        data = body[pos:nxt]
        name = None
        for line in headers.split("\r\n"):
            if line.lower().startswith("content-disposition:"):
                for piece in line.split(";")[1:]:
                    if "=" in piece:
                        k, v = piece.split("=", 1)
                        if k.strip().lower() == "name":
                            name = v.strip().strip('"')
        if name is not None:
            fields.setdefault(name, data)
        pos = nxt + 2


def ingest_metric_name(prof, sample_type_config):
    """pkg/og/convert/pprof RawProfile.metricName."""
    st = prof["string_table"]
    names = [_text(st[vt["type"]]) if 0 <= vt["type"] < len(st) else ""
             for vt in prof["sample_type"]]
    if "wall" in names:
        return "wall"
    name = ""
    for name in names:
        if sample_type_config is not None:
            cfg = sample_type_config.get(name)
            cfg = cfg if isinstance(cfg, dict) else {}
            disp = cfg.get("display-name") or cfg.get("display_name") or ""
        else:
            disp = DEFAULT_SAMPLE_TYPE_DISPLAY.get(name, "")
        if disp:
            name = disp
        if "cpu" in name:
            return "process_cpu"
        if "alloc_" in name or "inuse_" in name or name in ("space", "objects"):
            return "memory"
        if "mutex_" in name:
            return "mutex"
        if "block_" in name:
            return "block"
        if "goroutines" in name:
            return "goroutines"
    return name


# --- the server --------------------------------------------------------------------
class _Response:
    def __init__(self, status, body=b"", content_type=None, headers=None, close=False):
        self.status = status
        self.body = body
        self.headers = dict(headers or {})
        if content_type:
            self.headers["Content-Type"] = content_type
        self.close = close


def _json_error(status, code, message, headers=None, close=False):
    body = json.dumps({"code": code, "message": message}, separators=(",", ":")).encode()
    return _Response(status, body, "application/json", headers, close)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # never wait on a client's idle keep-alive connection
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # A client that hangs up mid-request is normal in fault tests.
        if self.receiver.verbose:
            super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pyroscope-test-receiver"

    def version_string(self):
        return self.server_version

    def setup(self):
        self.timeout = self.server.receiver.idle_timeout
        if hasattr(self.request, "do_handshake"):  # https: a client that
            self.request.settimeout(10)            # fails it is dropped here
            self.request.do_handshake()
        super().setup()
        self.server.receiver._track(self.connection, True)

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.receiver._track(self.connection, False)

    def log_message(self, fmt, *args):
        if self.server.receiver.verbose:
            sys.stderr.write("receiver: %s - %s\n" % (self.address_string(), fmt % args))

    def _serve(self):
        try:
            self.server.receiver._handle(self)
        except (ConnectionError, socket.timeout, TimeoutError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _serve

    def read_body(self, cap):
        """Reads the request body (Content-Length or chunked) up to `cap`
        bytes; raises _TooLarge beyond, ValueError when malformed."""
        te = self.headers.get("Transfer-Encoding")
        if te is not None and te.strip().lower() != "identity":
            if te.strip().lower() != "chunked":
                raise ValueError(f"unsupported transfer encoding: {te!r}")
            out = bytearray()
            while True:
                line = self.rfile.readline(65537)
                if not line.endswith(b"\n"):
                    raise ConnectionError("truncated chunk size line")
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ValueError("malformed chunk size") from None
                if size < 0:
                    raise ValueError("malformed chunk size")
                if size == 0:
                    while True:  # trailers
                        t = self.rfile.readline(65537)
                        if t in (b"\r\n", b"\n", b""):
                            return bytes(out)
                if len(out) + size > cap:
                    drained = self._drain_chunks(size, len(out), cap)
                    raise _TooLarge(len(out) + size, cap, drained)
                data = self.rfile.read(size)
                if len(data) != size:
                    raise ConnectionError("truncated chunk")
                out += data
                self.rfile.readline(3)
        cl = self.headers.get("Content-Length")
        if cl is None:
            return b""
        try:
            n = int(cl.strip())
        except ValueError:
            raise ValueError(f"bad Content-Length {cl!r}") from None
        if n < 0:
            raise ValueError(f"bad Content-Length {cl!r}")
        if n > cap:
            drained = n - cap <= DRAIN_LIMIT and self._discard(n)
            raise _TooLarge(n, cap, drained)
        data = self.rfile.read(n)
        if len(data) != n:
            raise ConnectionError("truncated body")
        return data

    def _discard(self, n):
        while n > 0:
            got = self.rfile.read(min(n, 65536))
            if not got:
                return False
            n -= len(got)
        return True

    def _drain_chunks(self, size, seen, cap):
        """Discards the rest of a chunked body (the current chunk of `size`
        included) within DRAIN_LIMIT; True when the whole body was read."""
        total = seen
        while True:
            total += size
            if total - cap > DRAIN_LIMIT or not self._discard(size):
                return False
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return True
            self.rfile.readline(3)
            line = self.rfile.readline(65537)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                return False
            if size < 0:
                return False

    def send(self, resp):
        self.send_response(resp.status)
        for k, v in resp.headers.items():
            self.send_header(k, v)
        body = resp.body if self.command != "HEAD" else b""
        self.send_header("Content-Length", str(len(resp.body)))
        if resp.close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if body:
            self.wfile.write(body)
        self.wfile.flush()


class Receiver:
    """A Pyroscope ingest endpoint for tests; see the module docstring.

        rec = Receiver(**fault_modes); rec.start(dir)
        rec.url; rec.requests(); rec.profiles(); rec.set_mode(...); rec.stop()
    """

    MODES = ("fail_first", "status", "retry_after", "delay", "close", "garbage", "down_for",
             "strict", "now", "require_auth")

    def __init__(self, fail_first=0, status=None, retry_after=None, delay=0.0, close=False,
                 garbage=False, down_for=None, strict=True, now=None, require_auth=None,
                 max_body=BODY_LIMIT, ingestion_rate_mb=INGESTION_RATE_MB,
                 burst_mb=INGESTION_BURST_MB, idle_timeout=120.0, verbose=False):
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.fail_first = 0
        self.status = None
        self.retry_after = None
        self.delay = 0.0
        self.close = False
        self.garbage = False
        self.strict = True
        self.now = None
        self.require_auth = None
        self._down_until = None
        self._down_for_at_start = down_for
        self.max_body = int(max_body)
        self.bucket = (TokenBucket(ingestion_rate_mb * MIB, int(burst_mb * MIB))
                       if ingestion_rate_mb is not None else None)
        self.idle_timeout = idle_timeout
        self.verbose = verbose
        self.set_mode(fail_first=fail_first, status=status, retry_after=retry_after,
                      delay=delay, close=close, garbage=garbage, strict=strict, now=now,
                      require_auth=require_auth)
        self._records = []
        self._profiles = []
        self._conns = set()
        self._server = None
        self._thread = None
        self._log = None
        self._stopping = threading.Event()
        self.dir = None
        self.url = None
        self.port = None

    # -- lifecycle -------------------------------------------------------------
    def start(self, directory, port=0, host="127.0.0.1", tls=None):
        """Binds host:port (0 = a free port) and serves on a thread; with
        tls=(certfile, keyfile), over https."""
        self.dir = pathlib.Path(directory)
        (self.dir / "profiles").mkdir(parents=True, exist_ok=True)
        self._log = open(self.dir / "requests.jsonl", "a", encoding="utf-8")
        self._server = _Server((host, port), _Handler)
        self._server.receiver = self
        self.port = self._server.server_address[1]
        self.url = f"http://{host}:{self.port}"
        if tls:
            import ssl
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            # The handshake happens in the handler thread, not in accept.
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True,
                                                  do_handshake_on_connect=False)
            self.url = f"https://{host}:{self.port}"
        if self._down_for_at_start is not None:
            self.set_mode(down_for=self._down_for_at_start)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stops serving and drops open connections; idempotent."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            with self._lock:
                conns = list(self._conns)
            for c in conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = None
        if self._log is not None:
            with self._lock:
                self._log.close()
                self._log = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def _track(self, conn, alive):
        with self._lock:
            if alive:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    # -- modes -------------------------------------------------------------------
    def set_mode(self, **modes):
        """Changes fault modes at run time. `fail_first=N` fails the next N
        requests; `down_for=S` answers 503 for S seconds from now (None: up);
        `status=None`, `close=False`, `garbage=False`, `delay=0` turn a mode
        off; `now` is a fixed unix time in seconds, a callable, or None."""
        for k in modes:
            if k not in self.MODES:
                raise TypeError(f"unknown mode {k!r}")
        with self._lock:
            for k, v in modes.items():
                if k == "down_for":
                    self._down_until = None if v is None else time.monotonic() + float(v)
                elif k == "fail_first":
                    self.fail_first = int(v or 0)
                elif k == "status":
                    self.status = None if v in (None, 0) else int(v)
                elif k == "delay":
                    self.delay = float(v or 0)
                elif k == "close":
                    if v not in (False, True, None, "reset", "fin"):
                        raise ValueError("close is True, 'fin' or 'reset'")
                    self.close = "fin" if v is True else (v or False)
                else:
                    setattr(self, k, v)

    def now_ns(self):
        now = self.now
        if now is None:
            return time.time_ns()
        if callable(now):
            now = now()
        return int(float(now) * 1e9)

    def _take_fault(self):
        """Decides this request's fault, consuming fail_first: returns None,
        "close", "reset", "garbage" or (status, why)."""
        with self._lock:
            if self.close:
                return "reset" if self.close == "reset" else "close"
            if self.garbage:
                return "garbage"
            if self._down_until is not None:
                if time.monotonic() < self._down_until:
                    return (503, "down_for")
                self._down_until = None
            if self.fail_first > 0:
                self.fail_first -= 1
                return (503, "fail_first")
            if self.status is not None:
                return (self.status, "status")
        return None

    # -- records -------------------------------------------------------------------
    def requests(self):
        """Every request so far, as the dicts written to requests.jsonl:
        n, time, method, path, query, peer, headers (redacted), status, code,
        error, warnings, fault, body_bytes, content_encoding, series (a list
        per series of {"name", "value"} label dicts), ids, profiles (one dict
        per raw profile: series, id, sample_types, samples, period_type,
        period, time_nanos, duration_nanos, raw_bytes, bytes, gzip, stored),
        and for convenience the first profile's sample_types and period_type
        and the total sample count ("samples")."""
        with self._lock:
            return copy.deepcopy(self._records)

    def profiles(self):
        """Accepted profiles in arrival order: (labels dict, __name__, path)."""
        with self._lock:
            return list(self._profiles)

    def wait_requests(self, count, timeout=10.0, path=None):
        """Waits until `count` requests (to `path` if given) are recorded;
        returns them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [r for r in self._records if path is None or r["path"] == path]
                if len(got) >= count:
                    return copy.deepcopy(got)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(got)} of {count} requests after {timeout}s")
                self._cond.wait(left)

    def _record(self, rec):
        line = json.dumps(rec, sort_keys=True)
        with self._cond:
            self._records.append(rec)
            if self._log is not None:
                self._log.write(line + "\n")
                self._log.flush()
            self._cond.notify_all()

    def _store(self, labels, raw, was_gzip, info):
        """Stores an accepted profile as <n>.pb.gz plus <n>.json; returns path."""
        data = bytes(raw) if was_gzip else gzip.compress(bytes(raw))
        ldict = {_text(n): _text(v) for n, v in labels}
        with self._lock:
            n = len(self._profiles) + 1
            path = self.dir / "profiles" / f"{n}.pb.gz"
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            side = dict(info)
            side["stored"] = str(path)
            side["labels"] = [{"name": _text(a), "value": _text(b)} for a, b in labels]
            (self.dir / "profiles" / f"{n}.json").write_text(json.dumps(side, indent=1))
            self._profiles.append((ldict, ldict.get("__name__", ""), path))
        return path

    # -- request handling -------------------------------------------------------------
    def _handle(self, h):
        url = urllib.parse.urlsplit(h.path)
        path = url.path
        if path.startswith(CONTROL_PREFIX):
            return self._control(h, path)
        with self._lock:
            seq = len(self._records) + 1
        rec = {
            "n": seq, "time": time.time(), "method": h.command, "path": path,
            "query": url.query, "peer": "%s:%d" % h.client_address[:2],
            "headers": redact_headers(h.headers.items()), "status": None, "code": None,
            "error": None, "warnings": [], "fault": None, "body_bytes": 0,
            "content_encoding": h.headers.get("Content-Encoding"), "series": [], "ids": [],
            "profiles": [], "sample_types": [], "samples": 0, "period_type": None,
        }
        cap = self.max_body
        body = None
        read_error = None
        try:
            body = h.read_body(cap)
            rec["body_bytes"] = len(body)
        except _TooLarge as e:
            read_error = e
        except ValueError as e:
            read_error = e

        fault = self._take_fault()
        if self.delay > 0:
            self._stopping.wait(self.delay)
        if fault in ("close", "reset", "garbage"):
            rec["fault"] = fault
            rec["status"] = 0
            if body is not None:
                self._peek(rec, path, h.headers, body)
            self._record(rec)
            if fault == "garbage":
                h.wfile.write(GARBAGE)
                h.wfile.flush()
            elif fault == "reset":
                # SO_LINGER 0 makes close() send RST instead of FIN. Close the
                # file objects first: they hold the descriptor open, and the
                # server would otherwise shut it down with a FIN first.
                h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                h.rfile.close()
                h.wfile.close()
                h.connection.close()
                h.rfile, h.wfile = io.BytesIO(), io.BytesIO()
            h.close_connection = True
            return

        if read_error is not None:
            resp = self._body_error(path, read_error)
        elif fault is not None:
            status, why = fault
            rec["fault"] = why
            self._peek(rec, path, h.headers, body)
            resp = _json_error(status, HTTP_TO_CODE.get(status, "unknown"),
                               f"receiver fault: {why}")
        else:
            try:
                resp = self._route(h, path, url.query, body, rec)
            except Exception as e:  # a receiver bug: make it loud, not a hang-up
                traceback.print_exc()
                rec["error"] = f"receiver internal error: {e!r}"
                resp = _json_error(500, "internal", rec["error"])
        if resp.status in (429, 503) and self.retry_after is not None:
            resp.headers["Retry-After"] = str(self.retry_after)
        rec["status"] = resp.status
        if resp.status >= 300 and rec["error"] is None:
            rec["error"] = self._error_text(resp)
        if rec["code"] is None and resp.status >= 300:
            rec["code"] = self._error_code(resp)
        self._record(rec)
        h.send(resp)

    @staticmethod
    def _error_text(resp):
        try:
            return json.loads(resp.body)["message"]
        except (ValueError, KeyError, TypeError):
            return resp.body.decode("utf-8", "replace").strip() or f"HTTP {resp.status}"

    @staticmethod
    def _error_code(resp):
        try:
            return json.loads(resp.body)["code"]
        except (ValueError, KeyError, TypeError):
            return None

    def _body_error(self, path, err):
        if isinstance(err, _TooLarge):
            if path in INGEST_PATHS:
                return _json_error(413, "invalid_argument",
                                   "request body too large: http: request body too large",
                                   close=not err.drained)
            return _json_error(429, "resource_exhausted", str(err), close=not err.drained)
        return _Response(400, b"400 Bad Request: " + str(err).encode(),
                         "text/plain; charset=utf-8", close=True)

    def _route(self, h, path, query, body, rec):
        if path == PUSH_PATH:
            return self._push(h, body, rec)
        if path in INGEST_PATHS:
            return self._ingest(h, query, body, rec)
        if path == "/ready":
            if h.command not in ("GET", "HEAD"):
                return _Response(405, b"", None, {"Allow": "GET"})
            return _Response(200, b"ready\n", "text/plain; charset=utf-8")
        return _Response(404, b"404 page not found\n", "text/plain; charset=utf-8")

    def _control(self, h, path):
        try:
            body = h.read_body(1 << 20)
        except (_TooLarge, ValueError) as e:
            return h.send(_Response(400, str(e).encode(), "text/plain", close=True))
        if path == CONTROL_PREFIX + "mode" and h.command == "POST":
            try:
                self.set_mode(**json.loads(body or b"{}"))
            except (TypeError, ValueError) as e:
                return h.send(_Response(400, str(e).encode() + b"\n", "text/plain"))
            return h.send(_Response(200, b"{}\n", "application/json"))
        if path == CONTROL_PREFIX + "requests" and h.command == "GET":
            return h.send(_Response(200, json.dumps(self.requests()).encode(),
                                    "application/json"))
        return h.send(_Response(404, b"404 page not found\n", "text/plain; charset=utf-8"))

    # -- Push ------------------------------------------------------------------------
    def _decode_push_body(self, headers, body):
        """Connect unary request decoding -> list of (labels, [(raw, id)]).
        Raises Reject."""
        ctype = canonical_content_type(headers.get("Content-Type"))
        codec = CONNECT_CONTENT_TYPES.get(ctype)
        enc = (headers.get("Content-Encoding") or "").strip()
        if enc and enc not in ("identity", "gzip"):
            raise Reject(501, f'unknown compression "{enc}": supported encodings are gzip',
                         "unimplemented")
        ver = headers.get("Connect-Protocol-Version")
        if ver is not None and ver != "1":
            raise _bad(f'Connect-Protocol-Version must be "1": got "{ver}"')
        if enc == "gzip":
            try:
                body, over = protowire.gunzip_limited(body, self.max_body)
            except protowire.WireError as e:
                raise _bad(f"decompress: {e}") from None
            if over:
                raise Reject(429, f"message is larger than configured max {self.max_body}",
                             "resource_exhausted")
        if codec == "json":
            return self._decode_push_json(body)
        try:
            req = protowire.decode_push_request(body)
        except protowire.WireError as e:
            raise _bad(f"unmarshal into *v1.PushRequest: {e}") from None
        out = []
        for s in req["series"]:
            labels = [(lp["name"], lp["value"]) for lp in s["labels"]]
            out.append((labels, [(x["raw_profile"], x["ID"]) for x in s["samples"]]))
        return out

    @staticmethod
    def _decode_push_json(body):
        """protojson PushRequest (Connect's JSON codec)."""
        try:
            doc = json.loads(body or b"{}")
            out = []
            for s in doc.get("series") or []:
                labels = [((lp.get("name") or "").encode(), (lp.get("value") or "").encode())
                          for lp in s.get("labels") or []]
                samples = []
                for x in s.get("samples") or []:
                    b64 = x.get("rawProfile", x.get("raw_profile")) or ""
                    b64 = b64.replace("-", "+").replace("_", "/")
                    raw = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
                    samples.append((raw, (x.get("ID") or "").encode()))
                out.append((labels, samples))
            return out
        except (ValueError, AttributeError, TypeError, binascii.Error) as e:
            raise _bad(f"unmarshal into *v1.PushRequest: {e}") from None

    def _peek(self, rec, path, headers, body):
        """Best effort: fills the record's series/ids for a faulted request."""
        if path != PUSH_PATH or not body:
            return
        try:
            series = self._decode_push_body(headers, body)
        except Reject:
            return
        for i, (labels, samples) in enumerate(series):
            rec["series"].append([{"name": _text(n), "value": _text(v)} for n, v in labels])
            for raw, sid in samples:
                rec["ids"].append(_text(sid))
                rec["profiles"].append({"series": i, "id": _text(sid), "raw_bytes": len(raw),
                                        "stored": None})

    def _push(self, h, body, rec):
        if h.command != "POST":
            return _Response(405, b"", None, {"Allow": "POST"})
        ctype = canonical_content_type(h.headers.get("Content-Type"))
        codec = CONNECT_CONTENT_TYPES.get(ctype)
        if codec is None:
            return _Response(415, b"", None, {"Accept-Post": ", ".join(CONNECT_CONTENT_TYPES)})
        ok_type = "application/proto" if codec == "proto" else "application/json"
        extra = {"Accept-Encoding": "gzip"}
        try:
            series = self._decode_push_body(h.headers, body)
            if self.require_auth is not None and \
                    h.headers.get("Authorization") != self.require_auth:
                raise Reject(401, "unauthenticated: missing or wrong Authorization",
                             "unauthenticated")
        except Reject as r:
            rec["code"] = r.code
            rec["error"] = r.message
            return _json_error(r.status, r.code, r.message, extra)
        errors = []
        decoded = []
        for si, (labels, samples) in enumerate(series):
            rec["series"].append([{"name": _text(n), "value": _text(v)} for n, v in labels])
            for raw, sid in samples:
                info = {"series": si, "id": _text(sid), "raw_bytes": len(raw), "stored": None}
                rec["ids"].append(info["id"])
                rec["profiles"].append(info)
                try:
                    prof, size, was_gzip = decode_raw_profile(raw)
                except Reject as r:
                    info["error"] = r.message
                    errors.append(r)
                    continue
                info.update(describe_profile(prof))
                info.update({"bytes": size, "gzip": was_gzip})
                decoded.append((labels, raw, prof, size, was_gzip, info))
        if not decoded and not errors:
            errors.append(_bad("no profiles received"))
        for labels, raw, prof, size, was_gzip, info in decoded:
            try:
                self._ingest_profile(labels, raw, prof, size, was_gzip, info, rec)
            except Reject as r:
                info["error"] = r.message
                r.message = f"push series with index {info['series']} and id {info['id']} " \
                            f"failed: {r.message}"
                errors.append(r)
        self._summarize(rec)
        if errors:
            # Connect reports the first error that carries a code.
            r = next((e for e in errors if e.code != "unknown"), errors[0])
            rec["code"] = r.code
            rec["error"] = r.message
            return _json_error(r.status, r.code, r.message, extra)
        return _Response(200, b"" if codec == "proto" else b"{}", ok_type, extra)

    @staticmethod
    def _summarize(rec):
        profs = [p for p in rec["profiles"] if "sample_types" in p]
        if profs:
            rec["sample_types"] = profs[0]["sample_types"]
            rec["period_type"] = profs[0]["period_type"]
            rec["samples"] = sum(p["samples"] for p in profs)

    def _ingest_profile(self, labels, raw, prof, size, was_gzip, info, rec):
        """distributor.pushSeries for one decoded profile: rate limit, profile
        validation, label validation, then storage. Raises Reject."""
        labels = list(labels)
        # Pyroscope adds service_name="unknown_service" when it is missing;
        # strict mode does not, so label validation refuses the profile.
        if not _labels_get(labels, b"service_name") and not self.strict:
            labels.append((b"service_name", SERVICE_FALLBACK))
        labels.sort(key=lambda kv: kv[0])
        total = sum(len(n) + len(v) for n, v in labels) + size
        if self.bucket is not None and total > self.bucket.burst:
            rec["warnings"].append(
                f"profile of {total} bytes uncompressed (labels included) is over "
                f"Pyroscope's default {self.bucket.burst}-byte burst: always refused (429)")
        if self.bucket is not None and not self.bucket.allow(total):
            raise Reject(429, f"push rate limit ({_humanize_ibytes(int(self.bucket.rate))}) "
                              f"exceeded while adding {_humanize_ibytes(total)}",
                         "resource_exhausted")
        warnings = validate_profile(prof, size, labels, self.now_ns(), self.strict)
        if prof["sample"] or self.strict:
            for ls in series_label_sets(prof, labels):
                validate_labels(ls, self.strict)
        rec["warnings"].extend(warnings)
        info["warnings"] = warnings
        info["stored"] = str(self._store(labels, raw, was_gzip, info))

    # -- /ingest -----------------------------------------------------------------------
    def _ingest(self, h, query, body, rec):
        q = urllib.parse.parse_qs(query, keep_blank_values=True)

        def get(k):
            return q.get(k, [""])[0]

        try:
            labelset = parse_labelset(get("name"))
        except ValueError as e:
            return _json_error(400, "invalid_argument", f"name: {e}")
        now = self.now_ns() / 1e9
        start = parse_attime(get("from"), now) if get("from") else now
        until = parse_attime(get("until"), now) if get("until") else now
        spy = get("spyName") or "unknown"
        fmt = get("format")
        ctype = h.headers.get("Content-Type") or ""
        rec["ingest"] = {"name": get("name"), "from": start, "until": until, "format": fmt,
                         "sampleRate": get("sampleRate"), "spyName": spy,
                         "content_type": ctype}

        def fail(message, status=422):
            rec["error"] = message
            return _json_error(status, HTTP_TO_CODE.get(status, "unknown"), message)

        stc = None
        if fmt == "pprof":
            data = body
        elif fmt in ("jfr", "trie", "tree", "lines", "speedscope") or \
                "multipart/form-data" not in ctype:
            return fail(f"receiver: /ingest format {fmt or 'groups'!r} is not implemented by "
                        "the test receiver (pprof only)")
        else:
            try:
                fields = parse_multipart(body, ctype)
                if "prev_profile" in fields:
                    raise ValueError("unsupported client version. Please update "
                                     "github.com/grafana/pyroscope-go to the latest version")
                if "sample_type_config" in fields:
                    stc = json.loads(fields["sample_type_config"])
                    if not isinstance(stc, dict):
                        raise ValueError("sample_type_config is not an object")
            except ValueError as e:
                return fail(f"parsing IngestInput-pprof failed failed to parse pprof /ingest "
                            f"multipart form {e}")
            data = fields.get("profile", b"")
        if not data:
            rec["warnings"].append("empty profile: nothing ingested")
            return _Response(200)
        try:
            prof, size, was_gzip = decode_raw_profile(data)
        except Reject as r:
            return fail(f"parsing IngestInput-pprof failed invalid_argument: {r.message}")
        # fixTime: a zero or 1970 time_nanos becomes `from`.
        if prof["time_nanos"] == 0 or 0 <= prof["time_nanos"] < 31536000 * 10**9:
            prof["time_nanos"] = int(start * 1e9)
        labels = [(b"__name__", ingest_metric_name(prof, stc).encode()),
                  (b"__delta__", b"false"), (b"pyroscope_spy", spy.encode())]
        if "service_name" not in labelset:
            labels.append((b"service_name", labelset["__name__"].encode()))
        for k, v in labelset.items():
            if k.startswith("__") and k != "__session_id__":
                continue
            labels.append((k.encode(), v.encode()))
        info = {"series": 0, "id": "", "raw_bytes": len(data), "stored": None,
                "bytes": size, "gzip": was_gzip}
        info.update(describe_profile(prof))
        rec["series"].append([{"name": _text(n), "value": _text(v)} for n, v in labels])
        rec["profiles"].append(info)
        self._summarize(rec)
        try:
            self._ingest_profile(labels, data, prof, size, was_gzip, info, rec)
        except Reject as r:
            info["error"] = r.message
            status = 429 if r.code == "resource_exhausted" else 422
            return fail(f"pushing IngestInput-pprof failed {r.code}: {r.message}", status)
        return _Response(200)


# --- CLI ------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0, help="0 = a free port")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--dir", required=True, help="requests.jsonl and profiles/ go here")
    ap.add_argument("--fail-first", type=int, default=0, metavar="N",
                    help="answer the first N requests 503")
    ap.add_argument("--status", type=int, metavar="CODE", help="answer every request CODE")
    ap.add_argument("--retry-after", metavar="SECS",
                    help="Retry-After value added to 429 and 503 answers")
    ap.add_argument("--delay", type=float, default=0.0, metavar="SECS",
                    help="sleep before answering")
    ap.add_argument("--close", nargs="?", const="fin", choices=("fin", "reset"),
                    help="close the connection without answering (reset: with RST)")
    ap.add_argument("--garbage", action="store_true", help="answer non-HTTP bytes")
    ap.add_argument("--down-for", type=float, metavar="SECS", help="answer 503 for SECS")
    ap.add_argument("--no-strict", action="store_true",
                    help="only Pyroscope's own checks (no strict: checks)")
    ap.add_argument("--now", type=float, metavar="UNIX", help="fixed 'now' for time checks")
    ap.add_argument("--require-auth", metavar="VALUE",
                    help="exact Authorization header required, else 401")
    ap.add_argument("--max-body", type=int, default=BODY_LIMIT, metavar="BYTES")
    ap.add_argument("--no-rate-limit", action="store_true",
                    help="no ingestion rate/burst limit (Pyroscope has one)")
    ap.add_argument("--verbose", action="store_true", help="log requests on stderr")
    a = ap.parse_args(argv)
    rec = Receiver(fail_first=a.fail_first, status=a.status,
                   retry_after=None if a.retry_after is None else a.retry_after,
                   delay=a.delay, close=a.close or False, garbage=a.garbage,
                   down_for=a.down_for, strict=not a.no_strict, now=a.now,
                   require_auth=a.require_auth, max_body=a.max_body,
                   ingestion_rate_mb=None if a.no_rate_limit else INGESTION_RATE_MB,
                   verbose=a.verbose)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    rec.start(a.dir, port=a.port, host=a.host)
    print(f"listening on {rec.url}", flush=True)
    while not stop.wait(0.2):
        pass
    rec.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

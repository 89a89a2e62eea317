"""Protobuf wire format, pprof and Pyroscope Push messages, by hand (stdlib only).

The decoder follows what Pyroscope's generated Go code (vtprotobuf
UnmarshalVT) accepts and refuses, so the test receiver answers a malformed
profile the way the server does:

- varints of up to 10 bytes (extra high bits dropped), longer ones fail
  ("integer overflow"); int64 fields read a varint as two's complement;
- repeated scalar fields accept both the packed (length-delimited) and the
  unpacked (one varint per key) encoding, even mixed;
- a known field with the wrong wire type fails; field number 0 fails;
- unknown fields of every wire type are skipped, groups included, and a
  stray end-group or wire type 6/7 fails;
- a singular message field seen twice is merged, a singular scalar seen
  twice keeps the last value;
- strings are kept as bytes: UTF-8 is the validator's job, as in Pyroscope.

The encoder writes the same messages from plain dicts, packed or unpacked,
and can be fed deliberately broken values, so tests can build valid and
malformed profiles without protoc.
"""
import gzip
import time
import zlib

# --- schemas ----------------------------------------------------------------
# Field number -> (name, kind, repeated). kind is a scalar kind name or a
# nested schema (a message). Names follow profile.proto / push.proto.
VARINT_KINDS = ("int64", "uint64", "bool")
LEN_KINDS = ("string", "bytes")

VALUE_TYPE = {1: ("type", "int64", False), 2: ("unit", "int64", False)}
LABEL = {
    1: ("key", "int64", False),
    2: ("str", "int64", False),
    3: ("num", "int64", False),
    4: ("num_unit", "int64", False),
}
SAMPLE = {
    1: ("location_id", "uint64", True),
    2: ("value", "int64", True),
    3: ("label", LABEL, True),
}
MAPPING = {
    1: ("id", "uint64", False),
    2: ("memory_start", "uint64", False),
    3: ("memory_limit", "uint64", False),
    4: ("file_offset", "uint64", False),
    5: ("filename", "int64", False),
    6: ("build_id", "int64", False),
    7: ("has_functions", "bool", False),
    8: ("has_filenames", "bool", False),
    9: ("has_line_numbers", "bool", False),
    10: ("has_inline_frames", "bool", False),
}
LINE = {
    1: ("function_id", "uint64", False),
    2: ("line", "int64", False),
    3: ("column", "int64", False),
}
LOCATION = {
    1: ("id", "uint64", False),
    2: ("mapping_id", "uint64", False),
    3: ("address", "uint64", False),
    4: ("line", LINE, True),
    5: ("is_folded", "bool", False),
}
FUNCTION = {
    1: ("id", "uint64", False),
    2: ("name", "int64", False),
    3: ("system_name", "int64", False),
    4: ("filename", "int64", False),
    5: ("start_line", "int64", False),
}
PROFILE = {
    1: ("sample_type", VALUE_TYPE, True),
    2: ("sample", SAMPLE, True),
    3: ("mapping", MAPPING, True),
    4: ("location", LOCATION, True),
    5: ("function", FUNCTION, True),
    6: ("string_table", "string", True),
    7: ("drop_frames", "int64", False),
    8: ("keep_frames", "int64", False),
    9: ("time_nanos", "int64", False),
    10: ("duration_nanos", "int64", False),
    11: ("period_type", VALUE_TYPE, False),
    12: ("period", "int64", False),
    13: ("comment", "int64", True),
    14: ("default_sample_type", "int64", False),
    15: ("doc_url", "int64", False),
}
LABEL_PAIR = {1: ("name", "string", False), 2: ("value", "string", False)}
RAW_SAMPLE = {1: ("raw_profile", "bytes", False), 2: ("ID", "string", False)}
RAW_PROFILE_SERIES = {
    1: ("labels", LABEL_PAIR, True),
    2: ("samples", RAW_SAMPLE, True),
    # annotations (3) are dropped by Pyroscope: skipped as an unknown field.
}
PUSH_REQUEST = {1: ("series", RAW_PROFILE_SERIES, True)}

_MASK64 = (1 << 64) - 1
_NAMES = {}  # id(schema) -> {name: (number, kind, repeated)}


class WireError(ValueError):
    """The bytes are not a valid encoding of the message."""


def _by_name(schema):
    table = _NAMES.get(id(schema))
    if table is None:
        table = {name: (num, kind, rep) for num, (name, kind, rep) in schema.items()}
        _NAMES[id(schema)] = table
    return table


def _default(kind, repeated):
    if repeated:
        return []
    if isinstance(kind, dict):
        return None
    if kind == "bool":
        return False
    if kind in LEN_KINDS:
        return b""
    return 0


_TEMPLATES = {}  # id(schema) -> (scalar defaults, names of repeated fields)


def new_message(schema):
    """A message with every field at its proto3 default."""
    t = _TEMPLATES.get(id(schema))
    if t is None:
        t = ({name: _default(kind, rep) for name, kind, rep in schema.values() if not rep},
             tuple(name for name, _, rep in schema.values() if rep))
        _TEMPLATES[id(schema)] = t
    msg = dict(t[0])
    for name in t[1]:
        msg[name] = []
    return msg


# Decoder field categories.
_MSG, _LEN, _INT64, _UINT64, _BOOL = range(5)
_COMPILED = {}  # id(schema) -> {field: (name, category, repeated, subschema)}


def _compiled(schema):
    c = _COMPILED.get(id(schema))
    if c is None:
        c = {}
        for num, (name, kind, rep) in schema.items():
            if isinstance(kind, dict):
                c[num] = (name, _MSG, rep, kind)
            else:
                cat = {"string": _LEN, "bytes": _LEN, "int64": _INT64, "uint64": _UINT64,
                       "bool": _BOOL}[kind]
                c[num] = (name, cat, rep, None)
        _COMPILED[id(schema)] = c
    return c


# --- decoding -------------------------------------------------------------------
def read_varint(buf, pos, end=None):
    """Returns (value, new_pos). At most 10 bytes; bits above 64 dropped."""
    if end is None:
        end = len(buf)
    result = 0
    shift = 0
    while True:
        if shift >= 70:
            raise WireError("proto: integer overflow")
        if pos >= end:
            raise WireError("unexpected EOF")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & _MASK64, pos
        shift += 7


def _skip_field(buf, pos, end, wire, field):
    """Skips one unknown field's payload (the key already read)."""
    if wire == 0:
        _, pos = read_varint(buf, pos, end)
    elif wire == 1:
        pos += 8
    elif wire == 2:
        n, pos = read_varint(buf, pos, end)
        if n >= 1 << 63:
            raise WireError("proto: negative length found during unmarshaling")
        pos += n
    elif wire == 3:
        # A group: skip fields until the matching end-group of this number.
        while True:
            if pos >= end:
                raise WireError("unexpected EOF")
            key, pos = read_varint(buf, pos, end)
            w, f = key & 7, key >> 3
            if w == 4:
                if f != field:
                    raise WireError("proto: mismatched end group")
                return pos
            if f == 0:
                raise WireError("proto: illegal tag 0")
            pos = _skip_field(buf, pos, end, w, f)
    elif wire == 4:
        raise WireError("proto: unexpected end of group")
    elif wire == 5:
        pos += 4
    else:
        raise WireError(f"proto: illegal wireType {wire}")
    if pos > end:
        raise WireError("unexpected EOF")
    return pos


def decode(buf, schema, start=0, end=None, into=None, name="message"):
    """Decodes one message of `schema` from buf[start:end] into a dict."""
    if end is None:
        end = len(buf)
    fields = _compiled(schema)
    msg = into if into is not None else new_message(schema)
    pos = start
    while pos < end:
        key = buf[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = read_varint(buf, pos, end)
        wire = key & 7
        field = key >> 3
        if wire == 4:
            raise WireError(f"proto: {name}: wiretype end group for non-group")
        if field <= 0 or field >= 1 << 29:
            raise WireError(f"proto: {name}: illegal tag {field} (wire type {wire})")
        spec = fields.get(field)
        if spec is None:
            pos = _skip_field(buf, pos, end, wire, field)
            continue
        fname, cat, repeated, sub = spec
        if cat <= _LEN:
            if wire != 2:
                raise WireError(f"proto: wrong wireType = {wire} for field {fname}")
            n = buf[pos] if pos < end else 0x80
            if n < 0x80:
                pos += 1
            else:
                n, pos = read_varint(buf, pos, end)
                if n >= 1 << 63:
                    raise WireError("proto: negative length found during unmarshaling")
            stop = pos + n
            if stop > end:
                raise WireError("unexpected EOF")
            if cat == _MSG:
                if repeated:
                    msg[fname].append(decode(buf, sub, pos, stop, name=fname))
                else:
                    m = msg[fname]
                    if m is None:
                        m = new_message(sub)
                        msg[fname] = m
                    decode(buf, sub, pos, stop, into=m, name=fname)
            elif repeated:
                msg[fname].append(bytes(buf[pos:stop]))
            else:
                msg[fname] = bytes(buf[pos:stop])
            pos = stop
        elif wire == 0:
            v = buf[pos] if pos < end else 0x80
            if v < 0x80:
                pos += 1
            else:
                v, pos = read_varint(buf, pos, end)
                if cat == _INT64 and v >= 1 << 63:
                    v -= 1 << 64
            if cat == _BOOL:
                v = v != 0
            if repeated:
                msg[fname].append(v)
            else:
                msg[fname] = v
        elif wire == 2 and repeated:
            n, pos = read_varint(buf, pos, end)
            if n >= 1 << 63:
                raise WireError("proto: negative length found during unmarshaling")
            stop = pos + n
            if stop > end:
                raise WireError("unexpected EOF")
            out = msg[fname]
            while pos < stop:
                v = buf[pos]
                if v < 0x80:
                    pos += 1
                else:
                    v, pos = read_varint(buf, pos, stop)
                    if cat == _INT64 and v >= 1 << 63:
                        v -= 1 << 64
                out.append(v != 0 if cat == _BOOL else v)
        else:
            raise WireError(f"proto: wrong wireType = {wire} for field {fname}")
    if pos != end:
        raise WireError("unexpected EOF")
    return msg


def decode_profile(data):
    """Decodes an uncompressed pprof Profile."""
    return decode(bytes(data), PROFILE, name="Profile")


def decode_push_request(data):
    return decode(bytes(data), PUSH_REQUEST, name="PushRequest")


# --- encoding -------------------------------------------------------------------
def enc_varint(v):
    """Encodes an integer as a varint; negative values as 10-byte two's complement."""
    v &= _MASK64
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def enc_key(field, wire):
    return enc_varint((field << 3) | wire)


def enc_len(field, payload):
    return enc_key(field, 2) + enc_varint(len(payload)) + payload


def _enc_scalar(kind, v):
    if kind == "bool":
        return enc_varint(1 if v else 0)
    return enc_varint(int(v))


def _as_bytes(v):
    if isinstance(v, str):
        return v.encode("utf-8")
    return bytes(v)


def encode(msg, schema, packed=True):
    """Encodes a dict as a message of `schema`.

    Missing or default-valued singular scalars are omitted (proto3); every
    element of a repeated field is written, empty strings included.
    `packed=False` writes repeated scalars one key per element.
    """
    table = _by_name(schema)
    for name in msg:
        if name not in table:
            raise KeyError(f"unknown field {name!r}")
    out = bytearray()
    for num in sorted(schema):
        name, kind, repeated = schema[num]
        if name not in msg:
            continue
        value = msg[name]
        if isinstance(kind, dict):
            items = value if repeated else ([] if value is None else [value])
            for item in items:
                out += enc_len(num, encode(item, kind, packed))
        elif kind in LEN_KINDS:
            items = value if repeated else ([value] if value else [])
            for item in items:
                out += enc_len(num, _as_bytes(item))
        elif repeated:
            if not value:
                continue
            if packed:
                out += enc_len(num, b"".join(_enc_scalar(kind, v) for v in value))
            else:
                for v in value:
                    out += enc_key(num, 0) + _enc_scalar(kind, v)
        elif value:
            out += enc_key(num, 0) + _enc_scalar(kind, value)
    return bytes(out)


def encode_profile(profile, packed=True, compress=False):
    data = encode(profile, PROFILE, packed)
    return gzip.compress(data) if compress else data


def encode_push_request(series, packed=True):
    """series: iterable of (labels, samples); labels a list of (name, value)
    pairs or a dict; samples a list of raw_profile bytes or (raw_profile, ID)."""
    out = []
    for labels, samples in series:
        if isinstance(labels, dict):
            labels = list(labels.items())
        sam = []
        for s in samples:
            raw, sid = (s, "") if isinstance(s, (bytes, bytearray)) else s
            sam.append({"raw_profile": raw, "ID": sid})
        out.append({"labels": [{"name": n, "value": v} for n, v in labels], "samples": sam})
    return encode({"series": out}, PUSH_REQUEST, packed)


def gunzip_limited(data, limit):
    """Decompresses gzip data (every member, as Go's gzip.Reader does) and
    stops as soon as the output passes `limit` bytes: returns (bytes, over)
    where `over` is True when the limit was passed. Never holds more than
    limit + 64 KiB of output: safe against gzip bombs. Raises WireError on a
    corrupt, truncated or trailing-garbage stream."""
    out = bytearray()
    pos = 0
    n = len(data)
    first = True
    while first or pos < n:
        if not first and (n - pos < 2 or data[pos] != 0x1F or data[pos + 1] != 0x8B):
            raise WireError("gzip: invalid header")
        first = False
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        chunk = memoryview(data)[pos:]
        try:
            while True:
                piece = d.decompress(chunk, 65536)
                out += piece
                if len(out) > limit:
                    return bytes(out[: limit + 1]), True
                chunk = d.unconsumed_tail
                if d.eof:
                    break
                if not chunk and not piece:
                    raise WireError("unexpected EOF")
        except zlib.error as e:
            raise WireError(f"gzip: {e}") from None
        pos = n - len(d.unused_data)
    return bytes(out), False


# --- building profiles for tests ---------------------------------------------
class ProfileBuilder:
    """Builds valid pprof profiles as dicts (see PROFILE) for tests.

    Stacks are given leaf first, as pprof stores them. Every function name
    gets one function and one location in one mapping.
    """

    def __init__(self, sample_types=(("samples", "count"), ("cpu", "nanoseconds")),
                 period_type=("cpu", "nanoseconds"), period=10_000_000,
                 time_nanos=None, duration_nanos=1_000_000_000,
                 mapping_file="/usr/bin/prog", build_id="f00dfeed"):
        self.strings = [""]
        self._index = {"": 0}
        self.profile = new_message(PROFILE)
        p = self.profile
        p["sample_type"] = [{"type": self.s(t), "unit": self.s(u)} for t, u in sample_types]
        if period_type is not None:
            p["period_type"] = {"type": self.s(period_type[0]), "unit": self.s(period_type[1])}
        p["period"] = period
        p["time_nanos"] = time.time_ns() if time_nanos is None else time_nanos
        p["duration_nanos"] = duration_nanos
        p["mapping"] = [{
            "id": 1, "memory_start": 0x400000, "memory_limit": 0x800000, "file_offset": 0,
            "filename": self.s(mapping_file), "build_id": self.s(build_id),
            "has_functions": True,
        }]
        p["string_table"] = self.strings
        self._locs = {}

    def s(self, text):
        """Interns a string; returns its index."""
        idx = self._index.get(text)
        if idx is None:
            idx = len(self.strings)
            self.strings.append(text)
            self._index[text] = idx
        return idx

    def location(self, func_name):
        loc = self._locs.get(func_name)
        if loc is None:
            fid = len(self.profile["function"]) + 1
            self.profile["function"].append({
                "id": fid, "name": self.s(func_name), "system_name": self.s(func_name),
                "filename": self.s("prog.c"), "start_line": 0,
            })
            loc = len(self.profile["location"]) + 1
            self.profile["location"].append({
                "id": loc, "mapping_id": 1, "address": 0x401000 + 16 * loc,
                "line": [{"function_id": fid, "line": 0}], "is_folded": False,
            })
            self._locs[func_name] = loc
        return loc

    def sample(self, stack, values, labels=None, num_labels=None):
        """Adds a sample: stack of function names, leaf first."""
        lab = []
        for k, v in (labels or {}).items():
            lab.append({"key": self.s(k), "str": self.s(v)})
        for k, v in (num_labels or {}).items():
            lab.append({"key": self.s(k), "num": v})
        self.profile["sample"].append({
            "location_id": [self.location(f) for f in stack],
            "value": list(values),
            "label": lab,
        })
        return self

    def encode(self, compress=False, packed=True):
        return encode_profile(self.profile, packed=packed, compress=compress)


def cpu_profile(time_nanos=None, samples=None):
    """A small valid CPU profile (dict) like the agent sends."""
    b = ProfileBuilder(time_nanos=time_nanos)
    for stack, count in samples or [(["leaf_fn", "mid_fn", "main"], 3),
                                    (["other_fn", "main"], 1)]:
        b.sample(stack, [count, count * 10_000_000])
    return b

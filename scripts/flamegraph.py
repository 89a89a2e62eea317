#!/usr/bin/python3
"""Writes a flame graph (a self-contained SVG that opens in any browser) of
pprof files, read through Google's pprof (`go tool pprof -raw`) so the
picture shows exactly what any pprof consumer sees.

    scripts/flamegraph.py --sample-index inuse_space --title "..." -o out.svg FILE...
"""
import argparse
import html
import os
import re
import subprocess
import sys
import zlib

ROW = 17
WIDTH = 1200
PAD = 10
MIN_FRACTION = 0.001  # frames narrower than this share are left out


def pprof_raw(files):
    env = dict(os.environ)
    env.setdefault("HOME", "/tmp")
    env["GOTOOLCHAIN"] = "local"
    env["PPROF_TMPDIR"] = env.get("TMPDIR", "/tmp")
    p = subprocess.run(["go", "tool", "pprof", "-raw"] + [str(f) for f in files],
                       capture_output=True, text=True, env=env, timeout=300)
    if p.returncode != 0:
        sys.exit(f"flamegraph: go tool pprof -raw failed: {p.stderr.strip()}")
    return p.stdout


_LINE = re.compile(r"^(.*) (\S*):(-?\d+) s=(\d+)(\(.*\))?$")


def parse_raw(text):
    """(sample type names, [(values, [location ids, leaf first])], {id: [names, innermost first]})."""
    types, samples, locations = [], [], {}
    section = None
    current = None
    for line in text.splitlines():
        if line == "Samples:":
            section = "types"
            continue
        if line == "Locations":
            section = "locations"
            continue
        if line == "Mappings":
            section = "mappings"
            continue
        if section == "types":
            types = [t.split("/")[0] for t in line.split()]
            section = "samples"
        elif section == "samples":
            if ":" not in line or line.startswith(" " * 16):
                continue  # a label line
            head, _, ids = line.partition(":")
            try:
                values = [int(v) for v in head.split()]
                samples.append((values, [int(i) for i in ids.split()]))
            except ValueError:
                continue
        elif section == "locations":
            m = re.match(r"^\s*(\d+): 0x[0-9a-f]+ (?:M=\d+ )?(?:\[F\] )?(.*)$", line)
            if m:
                current = int(m.group(1))
                locations[current] = []
                rest = m.group(2)
            elif current is not None and line.startswith(" " * 13):
                rest = line.strip()
            else:
                continue
            fm = _LINE.match(rest.strip())
            if fm:
                locations[current].append(fm.group(1))
            elif rest.strip() and rest.strip() != "??":
                locations[current].append(rest.strip())
    return types, samples, locations


def fold(types, samples, locations, sample_index):
    if sample_index not in types:
        sys.exit(f"flamegraph: no sample type {sample_index!r} (have {', '.join(types)})")
    col = types.index(sample_index)
    root = {"name": "all", "value": 0, "children": {}}
    for values, ids in samples:
        v = values[col]
        if v <= 0:
            continue
        frames = []
        for loc in reversed(ids):  # root first
            names = locations.get(loc) or ["[unknown]"]
            frames.extend(reversed(names))  # inlined: outermost first
        node = root
        node["value"] += v
        for name in frames:
            child = node["children"].get(name)
            if child is None:
                child = node["children"][name] = {"name": name, "value": 0, "children": {}}
            child["value"] += v
            node = child
    return root


def color(name):
    h = zlib.crc32(name.encode())
    if name.startswith("["):
        return "rgb(190,190,190)"
    return f"rgb({205 + h % 50},{80 + (h >> 8) % 120},{(h >> 16) % 60})"


def human(v, unit):
    if unit == "bytes":
        for u in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(v) < 1024 or u == "TiB":
                return f"{v:.1f} {u}" if u != "B" else f"{v} B"
            v /= 1024
    if unit == "nanoseconds":
        return f"{v / 1e9:.2f} s"
    return f"{v:,}"


def render(root, title, unit):
    total = root["value"] or 1
    rects = []
    depth_max = 0

    def walk(node, x, depth):
        nonlocal depth_max
        depth_max = max(depth_max, depth)
        w = node["value"] / total * (WIDTH - 2 * PAD)
        rects.append((x, depth, w, node))
        cx = x
        for child in sorted(node["children"].values(), key=lambda c: c["name"]):
            if child["value"] / total >= MIN_FRACTION:
                walk(child, cx, depth + 1)
            cx += child["value"] / total * (WIDTH - 2 * PAD)

    walk(root, PAD, 0)
    height = (depth_max + 1) * ROW + 60
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'font-family="monospace" font-size="11">',
           f'<rect width="100%" height="100%" fill="#fdfdf6"/>',
           f'<text x="{PAD}" y="20" font-size="15">{html.escape(title)}</text>',
           f'<text x="{PAD}" y="38" fill="#555">total {html.escape(human(root["value"], unit))}; '
           f'hover a frame for its share</text>']
    for x, depth, w, node in rects:
        y = height - (depth + 1) * ROW - 4
        share = 100.0 * node["value"] / total
        label = f'{node["name"]} ({human(node["value"], unit)}, {share:.1f}%)'
        out.append(f'<g><title>{html.escape(label)}</title>'
                   f'<rect x="{x:.1f}" y="{y}" width="{max(w - 0.5, 0.1):.1f}" height="{ROW - 1}" '
                   f'fill="{color(node["name"])}" rx="2"/>')
        chars = int(w / 7)
        if chars >= 3:
            text = node["name"] if len(node["name"]) <= chars else node["name"][:chars - 2] + ".."
            out.append(f'<text x="{x + 3:.1f}" y="{y + ROW - 5}">{html.escape(text)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--sample-index", required=True, help="e.g. cpu, inuse_space, alloc_space")
    ap.add_argument("--title", default="")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    text = pprof_raw(args.files)
    types, samples, locations = parse_raw(text)
    root = fold(types, samples, locations, args.sample_index)
    units = {"cpu": "nanoseconds", "alloc_space": "bytes", "inuse_space": "bytes"}
    svg = render(root, args.title or f"{args.sample_index} of {len(args.files)} profile(s)",
                 units.get(args.sample_index, "count"))
    with open(args.output, "w") as f:
        f.write(svg)


if __name__ == "__main__":
    main()

"""Run programs with the agent preloaded and read what it wrote, through
Google's pprof (`go tool pprof`), the independent consumer."""
import os
import pathlib
import re
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
AGENT = BUILD / "libpyroagent.so"


def agent_env(extra=None, output_dir=None, preload=True):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYROSCOPE_", "PYROAGENT_", "LD_PRELOAD"))}
    if preload:
        env["LD_PRELOAD"] = str(AGENT)
    if output_dir is not None:
        env["PYROAGENT_OUTPUT_DIR"] = str(output_dir)
    env.update(extra or {})
    return env


def run(argv, env, timeout=120, check=True):
    p = subprocess.run([str(a) for a in argv], env=env, capture_output=True,
                       text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{argv} exited {p.returncode}\nstdout:{p.stdout}\nstderr:{p.stderr}")
    return p


def profile_files(output_dir, kind):
    return sorted(pathlib.Path(output_dir).glob(f"*.{kind}.*.pb.gz"))


def pprof(args, files):
    env = dict(os.environ)
    env.setdefault("HOME", "/tmp")
    env["GOTOOLCHAIN"] = "local"
    env["GOFLAGS"] = ""
    env["PPROF_TMPDIR"] = env.get("TMPDIR", "/tmp")
    p = subprocess.run(["go", "tool", "pprof"] + list(args) + [str(f) for f in files],
                       capture_output=True, text=True, env=env, timeout=120)
    if p.returncode != 0:
        raise AssertionError(f"go tool pprof {args} failed: {p.stderr}")
    return p.stdout


_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "B": 1, "kB": 1024,
          "KB": 1024, "MB": 1 << 20, "GB": 1 << 30}


def _value(text):
    m = re.match(r"^([0-9.]+)([a-zA-Zµ]*)$", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS.get(m.group(2), 1.0)


def top(files, sample_index, cum=True):
    """Parses `go tool pprof -top`: returns (total, {function: (flat, cum)})."""
    args = ["-top", "-nodecount=500", f"-sample_index={sample_index}"]
    if cum:
        args.append("-cum")
    out = pprof(args, files)
    total = None
    rows = {}
    for line in out.splitlines():
        m = re.search(r"of ([0-9.]+[a-zA-Zµ]*) total", line)
        if m:
            total = _value(m.group(1))
        m = re.match(r"^\s*([0-9.]+[a-zA-Zµ]*)\s+[0-9.]+%\s+[0-9.]+%\s+([0-9.]+[a-zA-Zµ]*)\s+[0-9.]+%\s+(.+?)\s*$", line)
        if m:
            rows[m.group(3)] = (_value(m.group(1)), _value(m.group(2)))
    if total is None:
        raise AssertionError("no total in pprof output:\n" + out)
    return total, rows


def traces(files, sample_index=None):
    """`go tool pprof -traces`: a list of stacks (function names, leaf first)."""
    args = ["-traces"]
    if sample_index:
        args.append(f"-sample_index={sample_index}")
    out = pprof(args, files)
    stacks, cur = [], []
    for line in out.splitlines():
        if line.startswith("-----"):
            if cur:
                stacks.append(cur)
            cur = []
            continue
        parts = line.split()
        if not parts or line.startswith(("File:", "Build ID:", "Type:", "Time:", "Duration:",
                                         "Showing")):
            continue
        # a first line of a trace carries the value before the name
        name = parts[-1] if len(parts) == 1 or not re.match(r"^[0-9.]+", parts[0]) else " ".join(parts[1:])
        cur.append(name.strip())
    if cur:
        stacks.append(cur)
    return stacks


def function_names(files):
    """Every function name exactly as stored in the profiles (`go tool pprof
    -raw`; -top and -traces shorten C++ names)."""
    names = set()
    in_locations = False
    for line in pprof(["-raw"], files).splitlines():
        if line == "Locations":
            in_locations = True
        elif line == "Mappings":
            in_locations = False
        elif in_locations:
            # "name file:line s=start(system name)": pprof shortens C++
            # names for display and keeps the stored one in parentheses
            m = re.match(r"^\s*(?:\d+: 0x[0-9a-f]+ (?:M=\d+ )?)?(.*) \S*:-?\d+ s=\d+(?:\((.*)\))?$",
                         line)
            if m:
                names.add((m.group(2) or m.group(1)).strip())
    return names

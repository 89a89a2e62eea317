"""The deployment pieces: compose file, Kubernetes manifests, and the
container entrypoint run for real against the aggregator and the receiver."""
import os
import pathlib
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from agentrun import AGENT, BUILD, ROOT, agent_env, pprof

sys.path.insert(0, str(ROOT / "tests" / "receiver"))
from receiver import Receiver  # noqa: E402

ENTRYPOINT = ROOT / "scripts" / "pyroagent-entrypoint"
COMPOSE = ROOT / "compose" / "docker-compose.yml"
K8S = ROOT / "compose" / "kubernetes"


def published_ports(service):
    """'host:container' for each port, whichever syntax docker-compose
    normalised it to (1.29 prints the long {published, target} form)."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append(f"{port['published']}:{port['target']}")
        else:
            out.append(str(port).split("/")[0])
    return out


def test_compose_file_is_valid():
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose (Debian package) is installed by make deps"
    p = subprocess.run([exe, "-f", str(COMPOSE), "config"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    cfg = yaml.safe_load(p.stdout)
    services = cfg["services"]
    assert {"pyroscope", "grafana", "aggregator"} <= set(services)
    assert "4040:4040" in published_ports(services["pyroscope"])
    graf = services["grafana"]["environment"]
    assert graf["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert graf["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert graf["GF_AUTH_DISABLE_LOGIN_FORM"] == "true"
    assert "grafana-pyroscope-app" in graf["GF_INSTALL_PLUGINS"]
    agg = services["aggregator"]
    assert agg["build"]["dockerfile"].endswith("compose/Dockerfile")
    assert str(agg.get("mem_limit")) in ("1g", "1073741824")
    assert agg["environment"]["PYROSCOPE_SERVER_ADDRESS"] == "http://pyroscope:4040"
    ds = yaml.safe_load((ROOT / "compose/grafana/provisioning/datasources/pyroscope.yml").read_text())
    assert ds["datasources"][0]["type"] == "grafana-pyroscope-datasource"
    assert ds["datasources"][0]["url"] == "http://pyroscope:4040"
    app = yaml.safe_load((ROOT / "compose/grafana/provisioning/plugins/pyroscope-app.yml").read_text())
    assert app["apps"][0]["type"] == "grafana-pyroscope-app"


def test_dockerfile_ships_agent_and_entrypoint():
    text = (ROOT / "compose" / "Dockerfile").read_text()
    assert "FROM debian:12 AS build" in text
    assert "/opt/pyroagent/libpyroagent.so" in text
    assert "scripts/pyroagent-entrypoint" in text
    assert 'ENTRYPOINT ["/opt/pyroagent/pyroagent-entrypoint"]' in text
    # every file the build stage copies exists
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src


def test_kubernetes_manifests():
    docs = list(yaml.safe_load_all((K8S / "aggregator.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert {"Namespace", "Deployment", "Service"} <= set(kinds)
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    shared = init["volumeMounts"][0]
    app = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in app["env"]}
    mounts = {m["name"]: m["mountPath"] for m in app["volumeMounts"]}
    # the init container fills the volume the app mounts where LD_PRELOAD points
    assert shared["name"] in mounts
    assert env["LD_PRELOAD"] == mounts[shared["name"]] + "/libpyroagent.so"
    assert env["PYROAGENT_PROCESS_FILTER"] == "aggregator"
    assert env["PYROSCOPE_SERVER_ADDRESS"].startswith("http://pyroscope.")
    assert app["resources"]["limits"]["memory"] == "1Gi"
    assert {v["name"] for v in pod["volumes"]} >= set(mounts)
    graf = yaml.safe_load((K8S / "grafana-values.yaml").read_text())
    assert "grafana-pyroscope-app" in graf["plugins"]
    assert graf["grafana.ini"]["auth.anonymous"]["enabled"] is True
    ds = graf["datasources"]["datasources.yaml"]["datasources"][0]
    assert ds["type"] == "grafana-pyroscope-datasource"
    yaml.safe_load((K8S / "pyroscope-values.yaml").read_text())


def entrypoint_env(extra):
    env = agent_env(preload=False)
    env.update(extra)
    return env


def test_entrypoint_profiles_the_aggregator_into_the_receiver(tmp_path):
    rec = Receiver()
    rec.start(tmp_path / "rec")
    server = None
    try:
        env = entrypoint_env({
            "PYROAGENT_LIB": str(AGENT),
            "PYROSCOPE_SERVER_ADDRESS": rec.url,
            "PYROSCOPE_UPLOAD_INTERVAL": "1s",
            "LD_PRELOAD": "",
        })
        server = subprocess.Popen(
            ["sh", str(ENTRYPOINT), str(BUILD / "aggregator"), "--port", "0", "--bind", "127.0.0.1",
             "--data-file", str(tmp_path / "readings.csv")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = server.stdout.readline()
        assert "listening on" in line, server.stderr.read()
        base = line.strip().split("listening on ", 1)[1]
        urllib.request.urlopen(urllib.request.Request(
            base + "/smartMeters/randomSmartMeterValues?meterCount=200000", method="POST")).read()
        deadline = time.time() + 8
        while time.time() < deadline:
            urllib.request.urlopen(base + "/smartMeters/sum").read()
            if any(p[1] == "process_cpu" for p in rec.profiles()) and \
               any(p[1] == "memory" for p in rec.profiles()):
                break
        server.terminate()
        server.wait(timeout=15)
        assert server.returncode == 0
        profs = rec.profiles()
        services = {labels["service_name"] for labels, _, _ in profs}
        assert services == {"aggregator"}, services  # the command's name by default
        assert any(name == "memory" for _, name, _ in profs)
        memory = [path for _, name, path in profs if name == "memory"]
        out = pprof(["-top", "-sample_index=alloc_space", "-nodecount=200"], memory)
        assert "load_readings" in out or "reading_new" in out, out
    finally:
        if server and server.poll() is None:
            server.kill()
        rec.stop()


def test_entrypoint_appends_to_ld_preload_and_filters_children(tmp_path):
    # An existing LD_PRELOAD entry is kept; name and filter default to the
    # command's name.
    env = entrypoint_env({
        "PYROAGENT_LIB": str(AGENT),
        "LD_PRELOAD": "/lib/x86_64-linux-gnu/libz.so.1",
        "PYROAGENT_OUTPUT_DIR": str(tmp_path),
        "PYROSCOPE_SERVER_ADDRESS": "",
        "PYROSCOPE_LOG_LEVEL": "debug",
    })
    p = subprocess.run(["sh", str(ENTRYPOINT), "sh", "-c",
                        'echo "$LD_PRELOAD|$PYROSCOPE_APPLICATION_NAME|$PYROAGENT_PROCESS_FILTER"'],
                       env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"/lib/x86_64-linux-gnu/libz.so.1 {AGENT}|sh|sh"


def test_entrypoint_runs_the_command_when_the_agent_cannot_load(tmp_path):
    bogus = tmp_path / "libpyroagent.so"
    bogus.write_text("not an ELF file")
    for lib in (str(bogus), str(tmp_path / "missing.so")):
        env = entrypoint_env({"PYROAGENT_LIB": lib})
        p = subprocess.run(["sh", str(ENTRYPOINT), "sh", "-c", "echo ran; exit 7"], env=env,
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 7 and p.stdout == "ran\n"
        lines = [l for l in p.stderr.splitlines() if l.startswith("pyroagent-entrypoint:")]
        assert len(lines) == 1 and "without profiling" in lines[0], p.stderr
    p = subprocess.run(["sh", str(ENTRYPOINT)], env=entrypoint_env({}), capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 64 and "usage" in p.stderr


def test_entrypoint_runs_the_command_when_the_loader_refuses_the_agent(tmp_path):
    """A library the loader cannot satisfy (a glibc symbol version the
    image lacks) makes it refuse to start any program: the probe sees
    that, and the command still starts, unprofiled."""
    # What an image with a glibc older than the agent's does: a symbol
    # version the library needs is missing, and the loader stops every
    # program ("version `GLIBC_2.34' not found"). Mimicked with a library
    # of our own whose version node is replaced after linking against it.
    (tmp_path / "g.c").write_text("int ghost(void) { return 1; }\n")
    (tmp_path / "x.c").write_text("int ghost(void); int use(void) { return ghost(); }\n")
    ghost = tmp_path / "libghost.so"

    def build_ghost(node):
        (tmp_path / "v.map").write_text(f"{node} {{ global: ghost; local: *; }};\n")
        subprocess.run(["cc", "-shared", "-fPIC", f"-Wl,--version-script={tmp_path / 'v.map'}",
                        "-Wl,-soname,libghost.so", "-o", ghost, tmp_path / "g.c"], check=True)

    build_ghost("GHOST_1.0")
    lib = tmp_path / "libpyroagent.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", lib, tmp_path / "x.c", f"-L{tmp_path}",
                    "-lghost", f"-Wl,-rpath,{tmp_path}"], check=True)
    build_ghost("GHOST_0.9")  # now: version `GHOST_1.0' not found
    p = subprocess.run(["sh", str(ENTRYPOINT), "sh", "-c", "echo ran; exit 7"],
                       env=entrypoint_env({"PYROAGENT_LIB": str(lib)}),
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 7 and p.stdout == "ran\n", p.stderr
    lines = [l for l in p.stderr.splitlines() if l.startswith("pyroagent-entrypoint:")]
    assert len(lines) == 1 and "does not load in this image" in lines[0], p.stderr
    assert "GHOST_1.0" in lines[0], lines[0]


def test_entrypoint_files_only_when_the_address_is_set_empty(tmp_path):
    p = subprocess.run(["sh", str(ENTRYPOINT), "sh", "-c", 'echo "[$PYROSCOPE_SERVER_ADDRESS]"'],
                       env=entrypoint_env({"PYROAGENT_LIB": str(AGENT),
                                           "PYROSCOPE_SERVER_ADDRESS": ""}),
                       capture_output=True, text=True, timeout=30)
    assert p.stdout == "[]\n", p.stderr
    p = subprocess.run(["sh", str(ENTRYPOINT), "sh", "-c", 'echo "[$PYROSCOPE_SERVER_ADDRESS]"'],
                       env={k: v for k, v in entrypoint_env({"PYROAGENT_LIB": str(AGENT)}).items()
                            if k != "PYROSCOPE_SERVER_ADDRESS"},
                       capture_output=True, text=True, timeout=30)
    assert p.stdout == "[http://pyroscope:4040]\n", p.stderr

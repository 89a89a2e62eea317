"""make demo's script at a small size: the incident is replayed and the story
told from the profiles (the failed sum, the loader holding the memory, the
streaming fix in constant memory, flame graphs that open in a browser)."""
import json
import os
import subprocess
import xml.etree.ElementTree as ET

from agentrun import ROOT


def test_demo_replays_the_incident(tmp_path):
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYROSCOPE_", "PYROAGENT_", "LD_PRELOAD"))}
    env.update({"METERS": "10000000", "SMALL": "100000", "CAP": "384m",
                "DEMO_DIR": str(out), "INTERVAL": "1s"})
    p = subprocess.run(["sh", str(ROOT / "scripts" / "demo.sh")], env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    text = p.stdout
    assert '500 {"error":"out of memory"' in text, text
    assert "server still up: GET /health -> 200" in text, text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed_large_sum"] is True
    # The out-of-cycle profile of the OOM guard is the one shown, and it
    # names the reading loader.
    assert "the OOM guard's out-of-cycle profile" in text, text
    story = text.split("## Who held the memory at the failure", 1)[1].split("##", 1)[0]
    assert "load_readings" in story, story
    peaks = summary["peak_rss_kib"]
    assert peaks["streaming"] < peaks["large"] / 2, peaks
    for name in ("flamegraph-cpu.svg", "flamegraph-memory.svg"):
        svg = ET.parse(out / name).getroot()
        assert svg.tag.endswith("svg")
        labels = " ".join(t.text or "" for t in svg.iter() if t.tag.endswith("text"))
        assert "handle_sum" in labels, (name, labels)
    assert not (out / "smartmeter-readings.csv").exists()
    assert "go tool pprof -http=" in text

"""The pytest-benchmark suite in benchmarks/ runs (enabled despite pytest.ini's --benchmark-disable)
and benchmarks/ratios.py turns its JSON into ratios against bptt from the same run."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.mark.slow
def test_suite_runs_and_ratios_read_its_json(tmp_path):
    out = tmp_path / "run.json"
    done = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "--benchmark-only", "-q",
                           "-k", "small-rnn-bptt or small-rnn-tbptt", f"--benchmark-json={out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    data = json.loads(out.read_text())
    names = {b["name"] for b in data["benchmarks"]}
    assert names == {"test_method[small-rnn-bptt]", "test_method[small-rnn-tbptt]"}
    for b in data["benchmarks"]:
        assert b["stats"]["rounds"] == 3 and b["extra_info"]["saved_bytes"] > 0 and b["extra_info"]["L"] == 100

    import ratios
    lines = ratios.report(data, "run.json").splitlines()
    header = next(l for l in lines if l.startswith("| config"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    rows = {r["method"]: r for r in (dict(zip(cols, (c.strip() for c in l.strip("|").split("|"))))
                                     for l in lines if l.startswith("| small"))}
    _, tbptt = sorted(data["benchmarks"], key=lambda b: b["name"])
    paired = tbptt["extra_info"]
    assert paired["baseline"] == "bptt" and paired["baseline_info"]["cell"] == "rnn" and paired["paired_ratio"] > 0
    assert rows["tbptt"]["x bptt"] == f"{paired['paired_ratio']:.2f}" and rows["bptt"]["x bptt"] == "1"
    assert rows["tbptt"]["ms/update"] == f"{1e3 * tbptt['stats']['median'] / 10:.2f}"   # L = 100: 10 windows

#!/usr/bin/env python3
# `pdvm bench` on the default model with the cpu backend: the JSON report (repetitions, median
# and stddev, parameter count checked against the gguf package, the CPU read-bandwidth probe and
# decode's share of it) and the markdown table (one row per test), plus a bad flag.
# ctest-label: model
import json
import os
import subprocess
from pathlib import Path

import numpy as np
from gguf import GGUFReader

from default_model import MODEL, require_default_model

ROOT = Path(__file__).resolve().parents[2]
PDVM = os.environ.get("PDVM_BIN", str(ROOT / "build" / "pdvm"))


def run(*args):
    return subprocess.run([PDVM, "bench", *args], capture_output=True, text=True, check=False)


def main():
    require_default_model()
    base = ["-m", str(MODEL), "--backend", "cpu", "-t", "2", "-p", "16", "-n", "8", "-r", "2"]
    result = run(*base, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    reader = GGUFReader(str(MODEL))
    n_params = sum(int(np.prod(t.shape)) for t in reader.tensors)
    assert report["n_params"] == n_params, (report["n_params"], n_params)
    assert report["backend"] == "cpu" and report["n_threads"] == 2 and report["repetitions"] == 2
    for test, n in (("pp", 16), ("tg", 8)):
        assert report[test]["n_tokens"] == n
        assert report[test]["tokens_per_s"] > 0 and report[test]["tokens_per_s_stddev"] >= 0
    # The CPU read-bandwidth probe ran, and decode's GB/s is stated as a share of it.
    bandwidth = report["read_bandwidth_gb_per_s"]
    assert bandwidth > 0, report
    pct = report["tg"]["pct_of_read_bandwidth"]
    assert abs(pct - 100 * report["tg"]["gb_per_s"] / bandwidth) < 1e-6 * max(pct, 1), report

    table = run(*base)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.strip().splitlines()
    assert lines[0].startswith("read bandwidth of the CPU:") and "GB/s" in lines[0], lines[0]
    assert lines[1].startswith("| model |") and "t/s" in lines[1], lines[1]
    rows = [line for line in lines[3:] if line.startswith("|")]
    assert [row.split("|")[7].strip() for row in rows] == ["pp16", "tg8"], rows
    assert all("±" in row.split("|")[8] for row in rows), rows
    assert float(rows[1].split("|")[13]) > 0, rows[1]  # % bw of the tg row

    unprobed = run("-m", str(MODEL), "--backend", "cpu", "-t", "2", "-p", "0", "-n", "4", "-r", "1", "--no-probe")
    unprobed = unprobed.stdout.strip().splitlines()
    assert unprobed[0].startswith("| model |") and unprobed[-1].split("|")[13].strip() == "-", unprobed

    bad = run(*base, "-r", "0")
    assert bad.returncode != 0 and "repetitions" in bad.stderr, bad.stderr
    print("bench cli: ok")


if __name__ == "__main__":
    main()

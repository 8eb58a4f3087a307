#!/usr/bin/env python3
# scripts/stages.py on the llama-3.2-1b geometry: a markdown table with the five stages, positive
# timings for the Python and CPU rows (tok/s = 1000 / (ms per layer * 16 layers)), and the GPU
# rows either measured (one launch per token for the megakernel, one per layer in layer mode) or
# marked unavailable on a machine without a GPU.
# ctest-label: slow
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PDVM = os.environ.get("PDVM_BIN", str(ROOT / "build" / "pdvm"))


def main():
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run([sys.executable, str(ROOT / "scripts" / "stages.py"), "--shape", "llama-3.2-1b",
                                 "--pdvm", PDVM, "--workdir", tmp, "--tokens", "16"],
                                capture_output=True, text=True, timeout=1800)
        assert result.returncode == 0, result.stderr
        assert not list(Path(tmp).iterdir()), "synthesized models left behind"
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| stage |"))
    rows = [line.split("|")[1:-1] for line in lines[header + 2 : header + 7]]
    stages = [r[0].strip() for r in rows]
    assert [s.split(" (")[0] for s in stages] == ["Python reference", "CPU backend", "GPU unfused",
                                                  "GPU fused layer", "GPU megakernel"], stages
    for row in rows[:2]:
        ms, tok_s = float(row[1].split()[0]), float(row[2])
        assert ms > 0 and abs(tok_s - 1000 / (ms * 16)) < 0.01 * tok_s + 0.01, row
    gpu = rows[2:]
    if all("unavailable" in r[1] for r in gpu):
        print("stages: ok (no GPU)")
        return
    assert float(gpu[1][3]) == 16 and float(gpu[2][3]) == 1, gpu
    assert all(0 < float(r[4]) <= 100 for r in gpu), gpu
    print("stages: ok")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
# scripts/ncu_stalls.py on a real Nsight Compute source page: 130 instructions of the PDVM kernel
# (1B Q4_0, session 16, call 7) around the grid wait for the attention items, cut from the page
# scripts/ncu-fused.sh wrote on an H100. The sums are checked against the CSV read here on its
# own; pages that are not ncu's, or that hold no samples, end with a one-line error.
# ctest-label: unit
import csv
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "ncu_stalls.py"
PAGE = ROOT / "tests" / "data" / "ncu_source_excerpt.csv"


def run(path, *args):
    return subprocess.run([sys.executable, str(SCRIPT), str(path), *args], capture_output=True, text=True)


def read_page(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header = rows[1]
    return [dict(zip(header, row)) for row in rows[2:] if len(row) >= len(header)]


def number(text):
    return int(text) if text else 0


def table_rows(text, first_cell):
    """The data rows of the markdown table whose header starts with `first_cell`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_cell} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def check_summary():
    result = run(PAGE, "--min-share", "0", "--top", "5")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    instructions = read_page(PAGE)
    total = sum(number(i["Warp Stall Sampling (All Samples)"]) for i in instructions)
    assert total > 0
    assert f"{len(instructions)} instructions, {total} warp samples" in out, out[:400]

    # Stall reasons: the barrier's share, and no share above 100 % or below 0.
    barrier = sum(number(i["stall_barrier"]) for i in instructions)
    shares = {row[0]: float(row[1].rstrip(" %")) for row in table_rows(out, "stall reason")}
    assert abs(shares["barrier"] - 100 * barrier / total) < 0.051, shares
    assert all(0 <= share <= 100 for share in shares.values())

    # Regions end at a BAR.SYNC or at the page's last instruction, cover the page in order, and
    # their shares add up to the whole (every region shows at --min-share 0 unless it has none).
    regions = table_rows(out, "region (instructions)")
    covered = 0.0
    previous_end = -1
    for cells in regions:
        first, last = (int(x) for x in re.fullmatch(r"(\d+)-(\d+)", cells[0]).groups())
        assert first > previous_end and last >= first
        previous_end = last
        assert last == len(instructions) - 1 or instructions[last]["Source"].strip().startswith("BAR.SYNC"), cells
        samples = sum(number(i["Warp Stall Sampling (All Samples)"]) for i in instructions[first:last + 1])
        assert abs(float(cells[2].rstrip(" %")) - 100 * samples / total) < 0.051, cells
        covered += 100 * samples / total
    assert abs(covered - 100) < 0.1, covered

    # The hottest instruction heads the instruction table.
    hottest = max(range(len(instructions)), key=lambda k: number(instructions[k]["Warp Stall Sampling (All Samples)"]))
    top = table_rows(out, "instruction")
    assert len(top) == 5
    assert int(top[0][0]) == hottest, (top[0], hottest)
    assert instructions[hottest]["Source"].strip() in top[0][4]


def check_bad_pages():
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "other.csv"
        other.write_text("a,b\n1,2\n3,4\n")
        result = run(other)
        assert result.returncode != 0
        assert "not an ncu source page" in result.stderr and str(other) in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1

        # The same page with every sample count cleared: nothing to summarize.
        with open(PAGE, newline="") as f:
            rows = list(csv.reader(f))
        sampled = [i for i, name in enumerate(rows[1]) if "Sampling" in name or name.startswith("stall_")]
        for row in rows[2:]:
            for i in sampled:
                if i < len(row):
                    row[i] = "0"
        empty = Path(tmp) / "empty.csv"
        with open(empty, "w", newline="") as f:
            csv.writer(f, quoting=csv.QUOTE_ALL).writerows(rows)
        result = run(empty)
        assert result.returncode != 0
        assert "no warp samples" in result.stderr, result.stderr


def main():
    check_summary()
    check_bad_pages()
    print("ncu_stalls: ok")


if __name__ == "__main__":
    main()

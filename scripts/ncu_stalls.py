#!/usr/bin/env python3
"""Summarizes an Nsight Compute source page (ncu --page source --csv --print-source sass) of one
kernel: where its warps stall, as markdown.

- the stall reasons' shares of all warp samples;
- the code between consecutive barriers (BAR.SYNC), in address order: how often it ran (the
  most warp executions of any of its instructions, so a loop inside counts its iterations), its
  samples, and their main stall reasons.
  A region's samples count warp-time: in the PDVM kernel, a region run only by the attention
  items' CTAs shows the items' steps, and the samples at a barrier after a poll loop show a grid
  wait;
- the instructions with the most samples.

Usage: scripts/ncu_stalls.py SOURCE.csv [--min-share PERCENT] [--top N]
"""
import argparse
import collections
import csv
import sys


def load(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    # The first row names the kernel; the second holds the column names.
    if len(rows) < 3 or rows[1][:2] != ["Address", "Source"]:
        sys.exit(f"ncu_stalls: {path}: not an ncu source page (--page source --csv --print-source sass)")
    kernel = rows[0][1] if len(rows[0]) > 1 else "?"
    header = rows[1]
    column = {name: i for i, name in enumerate(header)}
    stall_columns = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]
    instructions = []
    for row in rows[2:]:
        if len(row) < len(header):
            continue

        def number(name):
            value = row[column[name]]
            return int(value) if value else 0

        instructions.append({
            "source": row[1].strip(),
            "samples": number("Warp Stall Sampling (All Samples)"),
            "executed": number("Instructions Executed"),
            "stalls": {h[len("stall_"):]: n for h in stall_columns if (n := number(h))},
        })
    return kernel, instructions


def reasons(counter, total, n=4):
    return ", ".join(f"{k} {100 * v / total:.0f} %" for k, v in counter.most_common(n)) if total else ""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("--min-share", type=float, default=0.5, help="regions below this share of samples are left out")
    parser.add_argument("--top", type=int, default=15, help="instructions listed by samples")
    args = parser.parse_args()
    kernel, instructions = load(args.csv)
    total = sum(i["samples"] for i in instructions)
    if total == 0:
        sys.exit("ncu_stalls: no warp samples in the page (was SourceCounters collected?)")
    print(f"kernel: `{kernel}`\n\n{len(instructions)} instructions, {total} warp samples\n")

    overall = collections.Counter()
    for i in instructions:
        overall.update(i["stalls"])
    print("| stall reason | share of samples |\n| --- | ---: |")
    for name, count in overall.most_common(10):
        print(f"| {name} | {100 * count / total:.1f} % |")

    print("\n| region (instructions) | executed | share of samples | main stall reasons |\n| --- | ---: | ---: | --- |")
    start = 0
    for k, i in enumerate(instructions):
        if not i["source"].startswith("BAR.SYNC") and k + 1 < len(instructions):
            continue
        region = instructions[start:k + 1]
        start = k + 1
        samples = sum(r["samples"] for r in region)
        if samples and 100 * samples / total >= args.min_share:
            counter = collections.Counter()
            for r in region:
                counter.update(r["stalls"])
            executed = max(r["executed"] for r in region)
            print(f"| {k + 1 - len(region)}-{k} | {executed} | {100 * samples / total:.1f} % | {reasons(counter, samples)} |")

    print("\n| instruction | executed | share of samples | stall reasons | SASS |\n| ---: | ---: | ---: | --- | --- |")
    ranked = sorted(range(len(instructions)), key=lambda k: -instructions[k]["samples"])[: args.top]
    for k in ranked:
        i = instructions[k]
        counter = collections.Counter(i["stalls"])
        print(f"| {k} | {i['executed']} | {100 * i['samples'] / total:.1f} % | {reasons(counter, i['samples'], 2)} | "
              f"`{i['source']}` |")


if __name__ == "__main__":
    main()

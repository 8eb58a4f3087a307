#!/usr/bin/env python3
"""Summarises the logs of scripts/compute-sanitizer.sh (OUT_DIR/logs/*.log).

Every sanitizer report (memcheck: invalid or misaligned accesses, CUDA API errors, leaks;
racecheck: hazards) is attributed to pdvm or to a library: a device report by the kernel it
names (pdvm's kernels are all in namespace pdvm), an API error or a leak by the library whose code
its host backtrace passes through (NCCL, cuBLAS), else by the first host frame outside the CUDA
driver and runtime (the test binary is pdvm's code). Any library frame decides, not only the
first: NCCL's threads print their reports at once and the tool interleaves their lines, so a
report of NCCL's may carry another thread's pdvm frames, or NCCL's names in the wrong fields.
A device access report that names pdvm code stays pdvm's whatever else its lines hold.
Writes OUT_DIR/summary.txt (one row per run, then every distinct report with an example) and
prints a row per binary and tool plus the runs that were not clean.

usage: sanitizer_report.py OUT_DIR
"""
import collections
import pathlib
import re
import sys

TOOL_SUMMARY = re.compile(r"(ERROR SUMMARY: (\d+) errors?|RACECHECK SUMMARY: (\d+) hazards? displayed.*)")
NOT_PRINTED = re.compile(r"ERROR SUMMARY: (\d+) errors? were not printed")
HEADER = re.compile(r"^# (\w+) (\S+) ")
REPORT_START = re.compile(r"^========= (?! )(.*)")
REPORT_MORE = re.compile(r"^=========\s{2,}(.*)")
NOT_A_REPORT = re.compile(r"COMPUTE-SANITIZER|ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY|"
                          r"Target application returned|Saved host backtrace|Leaked \d+ bytes in total|"
                          r"^\s*$|No attachable process|Default timeout")
DEVICE_SITE = re.compile(r"\bat (?:0x[0-9a-f]+ in )?(.+?)\+0x[0-9a-f]+")
MODULE = re.compile(r"\bin (\S*?\.so(?:\.\d+)*|\S*gpu_\w+_test|\S*/pdvm)(?=\s|$)")
RUNTIME_MODULES = re.compile(r"libcuda\.so|libcudart|libc\.so|libstdc\+\+|ld-linux|libpthread|libgcc")
SANITIZER_MESSAGE = re.compile(r"Internal|process didn't terminate|not supported|Tool|Sanitizer")
DEVICE_ACCESS = re.compile(r"Invalid __\w+__ (?:read|write)|Misaligned|[Rr]ace reported|hazard")
# A library's code in a report line: its module, or one of its functions (argument lists removed
# first, so a pdvm function taking an ncclComm* does not count).
LIBRARY_CODE = (("nccl", re.compile(r"libnccl\.so|(?<![\w:])nccl[A-Z]\w*")),
                ("cublas", re.compile(r"libcublas(?:Lt)?\.so|(?<![\w:])cublas[A-Z]\w*")))
ARGUMENT_LIST = re.compile(r"\([^()]*\)")
CUT = {124: "cut (time limit)", 137: "killed", 130: "interrupted"}


def owner_of_module(module):
    name = module.rsplit("/", 1)[-1]
    if "nccl" in name:
        return "nccl"
    if "cublas" in name:
        return "cublas"
    if name.startswith("gpu_") or name.startswith("pdvm"):
        return "pdvm"
    return name


def attribute(lines):
    """Who a report belongs to: 'pdvm', 'nccl', 'cublas', 'sanitizer', a kernel or library name."""
    text = "\n".join(lines)
    if SANITIZER_MESSAGE.search(lines[0]):
        return "sanitizer", lines[0][:60]
    site = DEVICE_SITE.search(lines[0]) or (DEVICE_SITE.search(lines[1]) if len(lines) > 1 else None)
    if site and "Host Frame" not in site.group(0):
        kernel = site.group(1)
        if "pdvm::" in kernel:
            return "pdvm", kernel
        if "nccl" in kernel.lower():
            return "nccl", kernel
        if kernel.startswith(("nvjet", "cutlass", "sm90_", "sm80_", "cublas", "gemv", "gemm")):
            return "cublas", kernel
        return kernel[:40], kernel
    if DEVICE_ACCESS.search(lines[0]) and "pdvm::" in text:
        return "pdvm", lines[0]
    for owner, code in LIBRARY_CODE:
        for line in lines:
            found = code.search(ARGUMENT_LIST.sub("", line))
            if found:
                return owner, found.group(0)
    for module in MODULE.findall(text):
        if not RUNTIME_MODULES.search(module):
            return owner_of_module(module), module
    return "unknown", ""


def kind_of(first_line):
    kind = re.sub(r"^(Error|ERROR): ", "", first_line)
    kind = re.sub(r" at .*", "", kind)
    return re.sub(r"0x[0-9a-f]+|\b\d+\b", "N", kind)[:90]


def parse(log):
    run = {"name": log.stem, "tool": "?", "binary": "?", "rc": None, "seconds": None, "summary": None,
           "count": None, "not_printed": 0, "passed": 0, "failed": [], "skipped": 0, "reports": []}
    report = None
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("# ") and run["tool"] == "?":
            header = HEADER.match(line)
            if header:
                run["tool"], run["binary"] = header.group(1), header.group(2)
            continue
        if line.startswith("=========") and (not_printed := NOT_PRINTED.search(line)):
            run["not_printed"] = int(not_printed.group(1))
            report = None
            continue
        summary = TOOL_SUMMARY.search(line)
        if line.startswith("=========") and summary:
            run["summary"] = summary.group(1)
            run["count"] = int(summary.group(2) or summary.group(3))
            report = None
            continue
        more = REPORT_MORE.match(line)
        if more and report is not None:
            report.append(more.group(1).strip())
            continue
        start = REPORT_START.match(line)
        if start:
            report = None
            if not NOT_A_REPORT.search(start.group(1)):
                report = [start.group(1).strip()]
                run["reports"].append(report)
            continue
        report = None
        if m := re.match(r"^\[  PASSED  \] (\d+) tests?", line):
            run["passed"] = int(m.group(1))
        elif m := re.match(r"^\[  SKIPPED \] (\d+) tests?", line):
            run["skipped"] = int(m.group(1))
        elif m := re.match(r"^\[  FAILED  \] ([A-Za-z_]\S*)", line):
            if m.group(1) not in run["failed"]:
                run["failed"].append(m.group(1))
        elif m := re.match(r"^# rc=(\d+) seconds=(\d+)", line):
            run["rc"], run["seconds"] = int(m.group(1)), int(m.group(2))
    run["owners"] = collections.Counter(attribute(r)[0] for r in run["reports"])
    return run


def verdict(run):
    pdvm_reports = run["owners"].get("pdvm", 0)
    unattributed = run["owners"].get("unknown", 0) + run["owners"].get("sanitizer", 0)
    library_reports = sum(run["owners"].values()) - pdvm_reports - unattributed
    if pdvm_reports:
        return "FINDING in pdvm"
    if unattributed:
        return "unattributed reports: read the log"
    if run["rc"] in CUT:
        return CUT[run["rc"]] + (", library reports only" if library_reports else ", nothing reported so far")
    if run["summary"] is None:
        return "no sanitizer summary (rc %s)" % run["rc"]
    if library_reports:
        unread = ", %d more not printed" % run["not_printed"] if run["not_printed"] else ""
        return "library reports only" + unread + (", test failed" if run["failed"] else "")
    if run["count"]:
        return "reports the log did not parse"
    if run["failed"] or run["rc"] not in (0, None):
        return "clean; test failed (rc %s)" % run["rc"]
    return "clean"


def main():
    out = pathlib.Path(sys.argv[1])
    runs = [parse(log) for log in sorted((out / "logs").glob("*.log"))]
    rows = ["%-58s %-9s %4s %5s %9s %-52s %s" % ("run", "tool", "rc", "s", "pass/fail", "tool summary", "verdict")]
    for r in runs:
        rows.append("%-58s %-9s %4s %5s %4d/%-4d %-52s %s" % (
            r["name"][:58], r["tool"], r["rc"], r["seconds"], r["passed"], len(r["failed"]),
            (r["summary"] or "-")[:52], verdict(r)))
        for failed in r["failed"]:
            rows.append("    failed: " + failed)
    rows.append("")
    rows.append("Distinct reports (owner | kind | runs | example site):")
    distinct = collections.OrderedDict()
    for r in runs:
        for report in r["reports"]:
            owner, where = attribute(report)
            key = (owner, kind_of(report[0]))
            entry = distinct.setdefault(key, {"runs": set(), "example": report, "where": where})
            entry["runs"].add(r["name"])
    for (owner, kind), entry in distinct.items():
        rows.append("  %s | %s | %d runs (%s) | %s" % (owner, kind, len(entry["runs"]),
                                                       ", ".join(sorted(entry["runs"])[:3]), entry["where"][:100]))
        rows.extend("      " + line for line in entry["example"][:12])
    runs_log = out / "runs.log"
    if runs_log.exists():
        rows.append("")
        rows.append("runs.log:")
        rows.extend(runs_log.read_text().splitlines())
    try:
        (out / "summary.txt").write_text("\n".join(rows) + "\n")
    except OSError as error:  # e.g. a results folder fetched read-only: the console report still stands
        print("sanitizer_report.py: summary.txt not written: %s" % error, file=sys.stderr)

    print("%-34s %-9s %5s %6s %5s %5s %5s %6s %8s" % ("binary", "tool", "runs", "clean", "cut", "pass", "fail",
                                                     "pdvm", "other"))
    groups = collections.OrderedDict()
    for r in runs:
        groups.setdefault((r["binary"], r["tool"]), []).append(r)
    for (binary, tool), group in sorted(groups.items()):
        owners = collections.Counter()
        for r in group:
            owners.update(r["owners"])
        pdvm_reports = owners.get("pdvm", 0)
        print("%-34s %-9s %5d %6d %5d %5d %5d %6d %8d" % (
            binary, tool, len(group), sum(verdict(r) == "clean" for r in group),
            sum(r["rc"] in CUT for r in group), sum(r["passed"] for r in group),
            sum(len(r["failed"]) for r in group), pdvm_reports, sum(owners.values()) - pdvm_reports))
    others = [r for r in runs if verdict(r) != "clean"]
    print("\n%d of %d runs clean; the others:" % (len(runs) - len(others), len(runs)))
    for r in others[:60]:
        owners = ", ".join("%s %d" % item for item in r["owners"].most_common())
        print("  %-58s rc=%-4s %5ss %s%s" % (r["name"][:58], r["rc"], r["seconds"], verdict(r),
                                            " [" + owners + "]" if owners else ""))
    if len(others) > 60:
        print("  ... %d more in summary.txt" % (len(others) - 60))
    runs_log = out / "runs.log"
    unrun = ([line.strip() for line in runs_log.read_text().splitlines() if re.search(r"\snot (?:run|started):", line)]
             if runs_log.exists() else [])
    if unrun:
        print("\n%d runs not started:" % len(unrun))
        for line in unrun[:20]:
            print("  " + re.sub(r"\s+", " ", line))
    print("\nDistinct reports: %d (summary.txt lists each with an example)" % len(distinct))
    for (owner, kind), entry in list(distinct.items())[:25]:
        print("  %-8s %-70s %3d runs %s" % (owner[:8], kind[:70], len(entry["runs"]), entry["where"][:60]))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
# scripts/sanitizer_report.py on synthetic compute-sanitizer logs: NCCL's API errors, whose lines
# the tool interleaves between NCCL's threads (pdvm frames of one report under another's header,
# NCCL's names in the wrong fields), count as NCCL's; a device access in a pdvm kernel and a CUDA
# API error in pdvm's own host code are findings in pdvm, NCCL frames beside them or not; the
# reports past the print limit are counted; a results folder where summary.txt cannot be written
# still gets the console report.
# ctest-label: unit
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "sanitizer_report.py"

# The shape of the device logs of session 6 (mc_fused_tp.InKernelAllReduce...q4_1): the header of
# a cuMemCreate error inside ncclMemAlloc, the module field of its first frame taken by another
# thread's ncclCommInitRankFunc, then pdvm's frames that called NCCL.
INTERLEAVED_NCCL = [
    'Program hit CUDA_ERROR_NOT_PERMITTED (error 800) due to "operation not permitted" on CUDA API call to cuMemCreate.',
    "Saved host backtrace up to driver entry point at error",
    "Host Frame: ncclMemAlloc in allocator.cc:55 [0xa4c69] in ncclCommInitRankFunc(ncclAsyncJob*)",
    "Host Frame: pdvm::(anonymous namespace)::NcclCommunicator::device_collectives(unsigned long, int) [0x1e6945] in gpu_pdvm_tensor_parallel_test",
    "Host Frame: pdvm::TensorParallelPeers::worker(unsigned long) [0x168beb] in gpu_pdvm_tensor_parallel_test",
    "Host Frame:  [0x9cb83] in cudaErrorNoKernelImageForDevice",
]
# A header whose fields lost NCCL's names to other reports; only the frames' odd fields name NCCL.
SCRAMBLED_NCCL = [
    "Program hit error 209 on CUDA API call.",
    "Saved host backtrace up to driver entry point at error",
    "Host Frame:  [0x4cb045] in enqueue.cc",
    "Host Frame:  [0x1c461d] in ncclCommInitRankFunc(ncclAsyncJob*)",
    "Host Frame:  [0x9cb83] in",
]
INVALID_READ_IN_PDVM = [
    "Invalid __global__ read of size 4 bytes",
    "at pdvm::cuda::rms_norm_rows(const float *, const float *, float *, int, float)+0x1f0 in rms_norm.cu:42",
    "by thread (31,0,0) in block (7,0,0)",
    "Address 0x7f3a00001000 is out of bounds",
    "Saved host backtrace up to driver entry point at kernel launch time",
    "Host Frame: cuLaunchKernel [0x2d3b1f] in libcuda.so.1",
    "Host Frame: pdvm::CudaBackend::rms_norm(pdvm::Tensor const&, pdvm::Tensor const&, float, pdvm::Tensor&) [0x51f0a] in gpu_cuda_ops_test",
]
# A shared-memory race in a pdvm kernel whose site line another thread's output broke, printed
# while NCCL's thread was mid-report.
GARBLED_RACE_IN_PDVM = [
    "Error: Race reported between Write access at [0x2a0] in",
    "and Read access at pdvm::fused::attention_chunk(pdvm::fused::Args) in attention.cu:88 [480 hazards]",
    "Host Frame: ncclMemAlloc in allocator.cc:55 [0xa4c69] in libnccl.so.2",
]
# pdvm's own host code passing a bad argument; a pdvm function that takes NCCL's types is still pdvm's.
API_ERROR_IN_PDVM = [
    'Program hit cudaErrorInvalidValue (error 1) due to "invalid argument" on CUDA API call to cudaMemcpyAsync.',
    "Saved host backtrace up to driver entry point at error",
    "Host Frame: cudaMemcpyAsync [0x7c1d2] in libcudart.so.12",
    "Host Frame: pdvm::(anonymous namespace)::Clique::Clique(std::vector<ncclComm*, std::allocator<ncclComm*> >, std::vector<int, std::allocator<int> >) [0x1e2f00] in gpu_tensor_parallel_cuda_test",
]


def load_script():
    spec = importlib.util.spec_from_file_location("sanitizer_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def log_text(tool, binary, reports, passed, summary, not_printed=0, rc=9):
    lines = ["# %s %s --gtest_filter=* GPUs 0,1 limit 300 s" % (tool, binary), "========= COMPUTE-SANITIZER",
             "[==========] Running 1 test from 1 test suite."]
    for report in reports:
        lines.append("========= " + report[0])
        lines.extend("=========     " + line for line in report[1:])
    lines.append("[  PASSED  ] %d test." % passed if passed else "[  FAILED  ] Suite.Case")
    lines.append("========= " + summary)
    if not_printed:
        lines.append("========= ERROR SUMMARY: %d errors were not printed. Use --print-limit option to adjust "
                     "the number of printed errors" % not_printed)
    lines.append("# rc=%d seconds=42" % rc)
    return "\n".join(lines) + "\n"


def write_run(out):
    logs = out / "logs"
    logs.mkdir(parents=True)
    (logs / "mc_fused_tp.Interleaved.log").write_text(log_text(
        "memcheck", "gpu_pdvm_tensor_parallel_test", [INTERLEAVED_NCCL, SCRAMBLED_NCCL], 1,
        "ERROR SUMMARY: 5 errors", not_printed=3))
    (logs / "mc_ops.log").write_text(log_text(
        "memcheck", "gpu_cuda_ops_test", [INVALID_READ_IN_PDVM], 0, "ERROR SUMMARY: 1 error"))
    (logs / "rc_fused.log").write_text(log_text(
        "racecheck", "gpu_pdvm_fused_prompts_test", [GARBLED_RACE_IN_PDVM], 1,
        "RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)"))
    (logs / "mc_tp.log").write_text(log_text(
        "memcheck", "gpu_tensor_parallel_cuda_test", [API_ERROR_IN_PDVM], 1, "ERROR SUMMARY: 1 error"))
    (logs / "mc_clean.log").write_text(log_text(
        "memcheck", "gpu_cuda_matmul_test", [], 1, "ERROR SUMMARY: 0 errors", rc=0))
    (out / "runs.log").write_text(
        "mc_fused_tp.Interleaved rc=9 42 s  ERROR SUMMARY: 2 errors were not printed. Use --print-limit option\n"
        "mc_clean                rc=0 42 s  ERROR SUMMARY: 0 errors\n"
        "rc_layer.3              not started: 12 s of the budget left\n")


def run_script(out):
    result = subprocess.run([sys.executable, str(SCRIPT), str(out)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result


def verdicts(summary_text):
    rows = {}
    for line in summary_text.splitlines()[1:]:
        if not line.strip():
            break
        if not line.startswith(" "):
            rows[line.split()[0]] = line
    return rows


def main():
    report = load_script()
    assert report.attribute(INTERLEAVED_NCCL)[0] == "nccl", report.attribute(INTERLEAVED_NCCL)
    assert report.attribute(SCRAMBLED_NCCL)[0] == "nccl", report.attribute(SCRAMBLED_NCCL)
    assert report.attribute(INVALID_READ_IN_PDVM)[0] == "pdvm", report.attribute(INVALID_READ_IN_PDVM)
    assert report.attribute(INVALID_READ_IN_PDVM + INTERLEAVED_NCCL[2:])[0] == "pdvm"
    assert report.attribute(GARBLED_RACE_IN_PDVM)[0] == "pdvm", report.attribute(GARBLED_RACE_IN_PDVM)
    assert report.attribute(API_ERROR_IN_PDVM)[0] == "pdvm", report.attribute(API_ERROR_IN_PDVM)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        write_run(out)
        result = run_script(out)
        rows = verdicts((out / "summary.txt").read_text())
        assert set(rows) == {"mc_fused_tp.Interleaved", "mc_ops", "rc_fused", "mc_tp", "mc_clean"}, rows
        assert rows["mc_fused_tp.Interleaved"].endswith("library reports only, 3 more not printed"), rows
        assert "ERROR SUMMARY: 5 errors" in rows["mc_fused_tp.Interleaved"], rows
        for finding in ("mc_ops", "rc_fused", "mc_tp"):
            assert rows[finding].endswith("FINDING in pdvm"), rows[finding]
        assert rows["mc_clean"].endswith(" clean"), rows
        unrun = result.stdout.split("runs not started:")[1].split("\n\n")[0].strip().splitlines()
        assert unrun == ["rc_layer.3 not started: 12 s of the budget left"], result.stdout

        # A results folder whose summary.txt cannot be written (here: a folder in its place).
        blocked = Path(tmp) / "blocked"
        write_run(blocked)
        (blocked / "summary.txt").mkdir()
        result = run_script(blocked)
        assert "summary.txt not written" in result.stderr, result.stderr
        assert "FINDING in pdvm" in result.stdout and "mc_fused_tp.Interleaved" in result.stdout, result.stdout
    print("sanitizer_report.py: attribution, print-limit count, unwritable summary: ok")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
# Differential test: `pdvm info --json` against the gguf package's GGUFReader - every metadata
# key (type, scalar value, array length and first elements) and the tensor table (name, type,
# shape, bytes, offsets) - on the default model, llama.cpp's vocab-only GGUFs, and random files
# (one split in three) written by gguf's own GGUFWriter.
# ctest-label: model
import json
import math
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from default_model import MODEL, require_default_model

ROOT = Path(__file__).resolve().parents[2]
PDVM = os.environ.get("PDVM_BIN", str(ROOT / "build" / "pdvm"))
TESTDATA = Path(os.environ.get("PDVM_TESTDATA", ROOT.parent / "shared" / "testdata"))
VOCABS = ["ggml-vocab-gpt-2.gguf", "ggml-vocab-llama-spm.gguf", "ggml-vocab-starcoder.gguf"]
# Indexed by GGUFValueType id, as `pdvm info` names them.
TYPE_NAMES = ["u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"]


class Checker:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def equal(self, what, ours, theirs):
        same = ours == theirs or (isinstance(ours, float) and isinstance(theirs, float)
                                  and math.isnan(ours) and math.isnan(theirs))
        if same:
            self.passed += 1
        else:
            self.failed += 1
            print(f"MISMATCH {what}: pdvm {ours!r} != gguf {theirs!r}")


def pdvm_info(path):
    out = subprocess.run([PDVM, "info", "--json", str(path)], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def field_values(field, n):
    """First n elements of an array field, or its value, as plain Python values."""
    return field.contents(slice(0, n))


def compare(check, path, split_paths=None):
    info = pdvm_info(path)
    readers = [GGUFReader(p) for p in (split_paths or [path])]
    first = readers[0]
    name = Path(path).name
    check.equal(f"{name} version", info["version"], first.fields["GGUF.version"].contents())
    check.equal(f"{name} alignment", info["alignment"], first.alignment)
    check.equal(f"{name} data_offset", info["data_offset"], first.data_offset)
    check.equal(f"{name} splits", info["splits"], len(readers))

    fields = [(key, f) for key, f in first.fields.items() if not key.startswith("GGUF.")]
    check.equal(f"{name} keys", [kv["key"] for kv in info["metadata"]], [key for key, _ in fields])
    for kv, (key, field) in zip(info["metadata"], fields):
        where = f"{name} {key}"
        check.equal(f"{where} type", kv["type"], TYPE_NAMES[field.types[0]])
        if field.types[0] == GGUFValueType.ARRAY:
            array = kv["value"]
            check.equal(f"{where} element type", array["element_type"], TYPE_NAMES[field.types[-1]])
            check.equal(f"{where} length", array["length"], len(field.data))
            check.equal(f"{where} truncated", array["truncated"], len(array["values"]) < len(field.data))
            check.equal(f"{where} values", array["values"], field_values(field, len(array["values"])))
        else:
            check.equal(f"{where} value", kv["value"], field.contents())

    tensors = [(index, reader, t) for index, reader in enumerate(readers) for t in reader.tensors]
    check.equal(f"{name} tensor count", len(info["tensors"]), len(tensors))
    for ours, (index, reader, t) in zip(info["tensors"], tensors):
        where = f"{name} tensor {t.name}"
        check.equal(f"{where} name", ours["name"], t.name)
        check.equal(f"{where} type", ours["type"], t.tensor_type.name.lower())
        check.equal(f"{where} shape", ours["shape"], [int(d) for d in t.shape])
        check.equal(f"{where} bytes", ours["bytes"], int(t.n_bytes))
        check.equal(f"{where} file", ours["file_index"], index)
        check.equal(f"{where} file offset", ours["file_offset"], int(t.data_offset))
        check.equal(f"{where} offset", ours["offset"], int(t.data_offset) - reader.data_offset)
    return info


def random_string(rng):
    alphabet = "abcxyz \u00e9\u4f60\u2713\U0001F600\"\\\n\t<>"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))


def write_random_file(path, rng, split_max_tensors=0):
    writer = GGUFWriter(path, "llama", split_max_tensors=split_max_tensors)
    ints = {GGUFValueType.UINT8: (0, 255), GGUFValueType.INT8: (-128, 127), GGUFValueType.UINT16: (0, 65535),
            GGUFValueType.INT16: (-32768, 32767), GGUFValueType.UINT32: (0, 2**32 - 1),
            GGUFValueType.INT32: (-2**31, 2**31 - 1), GGUFValueType.UINT64: (0, 2**64 - 1),
            GGUFValueType.INT64: (-2**63, 2**63 - 1)}
    for vtype, (lo, hi) in ints.items():
        writer.add_key_value(f"test.{vtype.name.lower()}", rng.randint(lo, hi), vtype)
        writer.add_key_value(f"test.{vtype.name.lower()}s", [rng.randint(lo, hi) for _ in range(rng.randint(1, 90))],
                             GGUFValueType.ARRAY, sub_type=vtype)
    writer.add_key_value("test.f32", float(np.float32(rng.gauss(0, 100))), GGUFValueType.FLOAT32)
    writer.add_key_value("test.f64", rng.gauss(0, 1e9), GGUFValueType.FLOAT64)
    writer.add_key_value("test.bool", rng.random() < 0.5, GGUFValueType.BOOL)
    writer.add_key_value("test.string", random_string(rng), GGUFValueType.STRING)
    writer.add_key_value("test.f32s", [float(np.float32(rng.gauss(0, 1))) for _ in range(rng.randint(1, 80))],
                         GGUFValueType.ARRAY, sub_type=GGUFValueType.FLOAT32)
    writer.add_key_value("test.strings", [random_string(rng) for _ in range(rng.randint(1, 100))],
                         GGUFValueType.ARRAY, sub_type=GGUFValueType.STRING)
    writer.add_key_value("test.bools", [rng.random() < 0.5 for _ in range(rng.randint(1, 10))],
                         GGUFValueType.ARRAY, sub_type=GGUFValueType.BOOL)
    nprng = np.random.default_rng(rng.randint(0, 2**32))
    for i in range(6):
        rows = rng.randint(1, 5)
        kind = rng.choice(["f32", "f16", "i32", "q8_0"])
        if kind == "q8_0":  # raw blocks: 34 bytes per 32 weights
            data = nprng.integers(0, 256, size=(rows, 34 * rng.randint(1, 3)), dtype=np.uint8)
            writer.add_tensor(f"t{i}.{kind}", data, raw_dtype=GGMLQuantizationType.Q8_0)
        else:
            dtype = {"f32": np.float32, "f16": np.float16, "i32": np.int32}[kind]
            data = (nprng.standard_normal((rows, rng.randint(1, 40))) * 100).astype(dtype)
            writer.add_tensor(f"t{i}.{kind}", data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def check_rejects_truncated(check, path):
    data = Path(path).read_bytes()
    cut = Path(path).with_name("truncated.gguf")
    cut.write_bytes(data[: len(data) // 2])
    result = subprocess.run([PDVM, "info", str(cut)], capture_output=True, text=True)
    check.equal("truncated exit code", result.returncode, 1)
    lines = result.stderr.strip().splitlines()
    check.equal("truncated one-line error", len(lines) == 1 and lines[0].startswith("pdvm: error: ")
                and "truncated.gguf" in lines[0], True)


def main():
    seed = int(os.environ.get("PDVM_TEST_SEED", random.randrange(2**32)))
    print(f"seed {seed} (set PDVM_TEST_SEED to replay)")
    rng = random.Random(seed)
    check = Checker()
    require_default_model()
    real = [MODEL] + [TESTDATA / "tokenizer" / v for v in VOCABS]
    missing = [str(p) for p in real if not p.exists()]
    if missing:
        print("missing input files: " + ", ".join(missing))
        return 1
    for path in real:
        info = compare(check, path)
        print(f"{path.name}: {len(info['metadata'])} keys, {len(info['tensors'])} tensors")
    with tempfile.TemporaryDirectory() as tmp:
        single = Path(tmp) / "random.gguf"
        write_random_file(single, rng)
        compare(check, single)
        check_rejects_truncated(check, single)
        write_random_file(Path(tmp) / "split.gguf", rng, split_max_tensors=2)
        splits = sorted(Path(tmp).glob("split-*-of-*.gguf"))
        check.equal("split file count", len(splits), 3)
        compare(check, splits[0], splits)
    print(f"{check.passed} passed, {check.failed} failed")
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())

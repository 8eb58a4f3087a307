"""The default model for the Python tests of label model: its path (PDVM_MODEL overrides) and
what a test does without it: skip (exit code 77, which ctest reports as skipped), or fail when
PDVM_REQUIRE_MODEL is set (CI), so a missing model is never silent there."""
from __future__ import annotations

import os
import sys
from pathlib import Path

MODEL = Path(os.environ.get("PDVM_MODEL", Path(__file__).resolve().parents[2] / "models" /
                            "SmolLM2-135M-Instruct.Q4_1.gguf"))
SKIP_EXIT_CODE = 77


def require_default_model() -> None:
    """Returns when the model is present; otherwise ends the script (skipped, or failed)."""
    if MODEL.exists():
        return
    if os.environ.get("PDVM_REQUIRE_MODEL"):
        sys.exit(f"FAIL: default model missing at {MODEL} (run scripts/setup.sh)")
    print(f"skipped: no default model at {MODEL}")
    sys.exit(SKIP_EXIT_CODE)

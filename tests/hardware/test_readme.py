"""The README's Devices snippet runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_devices_snippet_runs() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Devices", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md#devices", "exec"), scope)  # noqa: S102
    report = scope["hardware"].layer_snr_report(scope["noisy"])
    # photonic at 20 dB, calibrated on the exact activations of x; layer 2 then sees the
    # noisy outputs of layer 0, hence a tolerance of 1 dB rather than the calibration 0.05 dB
    assert all(abs(v - 20.0) < 1.0 for v in report.values())

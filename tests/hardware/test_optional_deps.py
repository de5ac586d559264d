"""aihwkit is optional (the ``rram`` extra): without it, noisydeq imports, the other devices
work, and anything that needs the rram device is one line with the install command, before
anything is written. Absence is simulated in a subprocess by a meta-path finder that refuses
``aihwkit`` (the installed copy stays where it is)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import contextlib, io, json, sys

    class NoAihwkit:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "aihwkit":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoAihwkit())
    from noisydeq import hardware
    from noisydeq.cli import main
    from noisydeq.errors import NoisyDEQError

    out = {"snr_ok": hardware.get_device("snr", snr_db=10).kind == "snr"}
    try:
        hardware.get_device("rram")
        out["rram"] = "built"
    except NoisyDEQError as err:
        out["rram"] = str(err)

    def cli(args):
        err, so = io.StringIO(), io.StringIO()
        code = 0
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(so):
            try:
                main(args)
            except SystemExit as ex:
                code = ex.code
        return {"code": code, "stderr": err.getvalue(), "stdout": so.getvalue()}

    out["sweep"] = cli(["sweep", "--device", "rram", "--snr", "10", "--depths", "1",
                        "--seed", "0", "--out", sys.argv[1], "--quiet"])
    out["devices"] = cli(["devices", "--json"])
    out["loaded"] = sorted(m for m in sys.modules if m.startswith("aihwkit"))
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def without_aihwkit(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("no-aihwkit")
    env = {**os.environ, "NOISYDEQ_JOBS": "1", "NOISYDEQ_THREADS": "1",
           "NOISYDEQ_CACHE": str(tmp / "cache")}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp / "run")], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), tmp


def test_library_without_aihwkit(without_aihwkit):
    out, _ = without_aihwkit
    assert out["snr_ok"] and out["loaded"] == []
    assert "needs aihwkit" in out["rram"] and "pip install 'noisydeq[rram]'" in out["rram"]


def test_rram_sweep_is_one_line_and_writes_nothing(without_aihwkit):
    out, tmp = without_aihwkit
    sweep = out["sweep"]
    assert sweep["code"] == 2 and "Traceback" not in sweep["stderr"]
    lines = sweep["stderr"].strip().splitlines()
    assert len(lines) == 1 and "pip install 'noisydeq[rram]'" in lines[0], lines
    assert not (tmp / "run").exists()


def test_devices_lists_rram_as_unavailable(without_aihwkit):
    out, _ = without_aihwkit
    assert out["devices"]["code"] == 0, out["devices"]
    rows = {r["name"]: r for r in json.loads(out["devices"]["stdout"])}
    assert "aihwkit" in rows["rram-wan2022"]["unavailable"]
    assert "unavailable" not in rows["snr"] and rows["snr"]["native_snr_db"] is not None

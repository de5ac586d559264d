"""``noisydeq devices`` names each preset by its own ``name``: a .toml path was listed by
its file name (``my-chip.toml``) and a bare kind by the kind, not the preset it loads."""

from __future__ import annotations

import json

from tests.cli_helpers import run_cli


def test_a_preset_file_is_listed_by_its_name_with_its_path(tmp_path, capsys):
    path = tmp_path / "my-chip.toml"
    path.write_text('kind = "snr"\nname = "lab-chip-7"\ndescription = "x"\nsnr_db = 15.0\n',
                    encoding="utf-8")
    code, out, err = run_cli(["devices", str(path), "rram", "snr"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["lab-chip-7", "snr"] and lines[0].endswith(
        f"(from {path})")
    assert lines[1].split()[0] == "rram-wan2022"  # a bare kind: the preset it loads
    assert lines[2].split()[0] == "snr" and "(from" not in lines[1] + lines[2]
    code, out, err = run_cli(["devices", str(path), "snr", "--json"], capsys)
    assert code == 0, err
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["lab-chip-7", "snr"]
    assert rows[0]["path"] == str(path) and "path" not in rows[1]


def test_a_preset_file_without_a_name_is_listed_by_its_stem(tmp_path, capsys):
    path = tmp_path / "bench.toml"
    path.write_text('kind = "snr"\ndescription = "x"\n', encoding="utf-8")
    code, out, err = run_cli(["devices", str(path), "--json"], capsys)
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["name"] == "bench" and row["path"] == str(path)

"""``noisydeq train``: bad input is one line + exit 2 + no traceback; a tiny run and its reuse."""

import json

import pytest

from noisydeq.cli import main


def _run(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        main(["train", *argv])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_train_and_sweep_take_the_same_train_preset_spelling():
    """``--train-preset`` is the name of the training preset in both commands (found through
    the click tree); ``train --preset``, its older spelling, is the same option."""
    import click

    from noisydeq.cli import cli

    ctx = click.Context(cli)
    found = {}
    for name in ("train", "sweep"):
        cmd = cli.get_command(ctx, name)
        [param] = [p for p in cmd.params if "--train-preset" in p.opts]
        assert param.opts[0] == "--train-preset", param.opts  # the name help shows first
        found[name] = param
        for flag in ["--train-preset", *param.opts[1:]]:
            sub = cmd.make_context(name, [flag, "paper"], resilient_parsing=True)
            assert sub.params[param.name] == "paper", (name, flag)
    assert found["train"].opts == ["--train-preset", "--preset"]
    assert found["sweep"].opts == ["--train-preset"]


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--epochs", "-1"], "--epochs"),
        (["--batch-size", "0"], "--batch-size"),
        (["--depths", "1,x"], "depth 'x' is not a positive integer"),
        (["--depths", "0,3"], "depth '0' is not a positive integer"),
        (["--depths", "-3"], "depth '-3' is not a positive integer"),
        (["--task", "digit"], "did you mean 'digits'"),
        (["--task", "mnist", "--data-dir", "/nonexistent/mnist"], "no such directory"),
        (["--torch-device", "gpu7"], "--torch-device"),
        (["--train-snr", "loud"], "--train-snr"),
        (["--preset", "papr"], "did you mean 'paper'"),
        (["--train-preset", "papr"], "did you mean 'paper'"),
        (["--kind", "cnn"], "--kind"),
        (["--width", "0"], "--width"),
        (["--device", "no-such-device"], "unknown device"),
        (["--out", "/proc/noisydeq-cannot-write"], "--out"),
    ],
)
def test_bad_input_is_one_line(capsys, tmp_path, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(capsys, *argv, "--quiet")
    assert code == 2
    assert needle in err
    assert err.count("\n") == 1 and err.startswith("noisydeq: error: ")
    assert "Traceback" not in err + out
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_train_family_then_reuse_and_other_config_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    args = ["--depths", "1", "--epochs", "1", "--batch-size", "128", "--quiet", "--json"]
    rows = json.loads(_call(capsys, args)[0])
    assert [(r["kind"], r["depth"], r["width"]) for r in rows] == [("deq", 1, 128),
                                                                    ("ffw", 1, 128)]
    assert not any(r["loaded"] for r in rows)
    again = json.loads(_call(capsys, args)[0])
    assert all(r["loaded"] for r in again)
    assert [r["value"] for r in again] == [r["value"] for r in rows]

    single = ["--kind", "ffw", "--depth", "2", "--epochs", "1", "--batch-size", "128",
              "--out", str(tmp_path / "one"), "--quiet", "--json"]
    first = json.loads(_call(capsys, single)[0])[0]
    assert (tmp_path / "one" / "model.safetensors").is_file() and first["depth"] == 2
    code, out, err = _run(capsys, *single[:5], "2", *single[6:])  # --epochs 2, same --out
    assert code == 2 and "different config" in err and "train.epochs 1 → 2" in err


def _call(capsys, args):
    main(["train", *args])  # success returns normally (standalone_mode=False)
    out = capsys.readouterr()
    return out.out, out.err


def test_the_table_columns_line_up_for_long_kind_names(capsys):
    """'mondeq' and 'ffw_relu' rows ran past the 4-wide kind column: depth, width and params
    stood under no heading."""
    from noisydeq.commands.train import _report

    rows = [{"kind": k, "depth": 1, "width": 128, "params": 26634, "metric": "accuracy",
             "value": 0.9, "loaded": False, "seconds": 1.0, "path": "p"}
            for k in ("mondeq", "ffw_relu", "deq")]
    _report(rows, as_json=False)
    lines = capsys.readouterr().out.splitlines()
    ends = {ln.index("26634") + 5 for ln in lines[1:]} | {lines[0].index("params") + 6}
    assert len(ends) == 1, lines
    assert len({ln.index(" 128 ") for ln in lines[1:]}) == 1, lines


def test_the_table_splits_time_as_the_log_line_does(capsys):
    """The table's time was the total with no split while the log line says 'trained in
    10.0 s: epochs 8.1 s, set-up and test 1.9 s': an epochs column now holds that part; a
    resumed model's time (over its runs) is marked and said, a cached one has no epochs.
    The headers say which time is which, "total" and "epochs" as the log line (the header
    "time epochs" over "1.5s 0.6s" was unclear)."""
    from noisydeq.commands.train import _report

    base = {"depth": 1, "width": 4, "params": 10, "metric": "accuracy", "value": 0.5,
            "path": "p"}
    rows = [{**base, "kind": "deq", "loaded": False, "seconds": 10.0,
             "seconds_this_run": 10.0, "epoch_seconds": 8.1},
            {**base, "kind": "ffw", "loaded": False, "seconds": 300.0,
             "seconds_this_run": 100.0, "epoch_seconds": 80.0},
            {**base, "kind": "deq", "loaded": True, "seconds": 5.0,
             "seconds_this_run": 0.0, "epoch_seconds": 0.0}]
    _report(rows, as_json=False)
    head, fresh, resumed, cached, note = capsys.readouterr().out.splitlines()
    assert head.split()[-3:] == ["total", "epochs", "path"]
    assert fresh.split()[-3:] == ["10.0s", "8.1s", "p"]
    assert resumed.split()[-3:] == ["300.0s*", "80.0s", "p"]
    assert cached.split()[-3:] == ["cached", "-", "p"]
    assert note.startswith("* resumed: total is the training time over every run"), note
    for col in ("total", "epochs"):  # right-aligned under their headings
        end = head.index(col) + len(col)
        assert {fresh[:end].split()[-1], resumed[:end].split()[-1],
                cached[:end].split()[-1]} == {"10.0s" if col == "total" else "8.1s",
                                              "300.0s*" if col == "total" else "80.0s",
                                              "cached" if col == "total" else "-"}
    _report(rows[:1], as_json=False)
    assert len(capsys.readouterr().out.splitlines()) == 2  # no note without a resumed row


def test_the_default_folder_is_named_after_the_config(capsys, tmp_path, monkeypatch):
    """The default --out was runs/train/<kind>-d<depth>-w<width>-s<seed> whatever else was
    asked: the README's `noisydeq train --kind deq --device rram ...` and then its
    `noisydeq train --task digits --adversarial trades ...` (both a DEQ of depth 1, width 128,
    seed 0) met in one folder and the second stopped with 'made with a different config'.
    The folder now ends in the config's hash: the same command finds its model again."""
    monkeypatch.chdir(tmp_path)
    base = ["--kind", "ffw", "--depth", "1", "--batch-size", "128", "--quiet", "--json",
            "--threads", "1"]
    first = json.loads(_call(capsys, [*base, "--epochs", "1"])[0])[0]
    other = json.loads(_call(capsys, [*base, "--epochs", "2"])[0])[0]
    again = json.loads(_call(capsys, [*base, "--epochs", "1"])[0])[0]
    assert first["path"] != other["path"] and again["path"] == first["path"]
    assert again["loaded"] and not first["loaded"] and not other["loaded"]
    assert 0 < first["epoch_seconds"] <= first["seconds_this_run"] == first["seconds"]
    folder = tmp_path / first["path"]
    assert folder.parent.name == f"ffw-d1-w128-s0-{first['config_hash'][:12]}"
    assert sorted(p.name for p in (tmp_path / "runs" / "train").iterdir()) == sorted(
        [folder.parent.name, (tmp_path / other["path"]).parent.name])

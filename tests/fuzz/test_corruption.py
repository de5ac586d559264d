"""Every kind of stored artefact, damaged every way: detected, reported with its name, never
used; cache entries are recomputed to the very values they held.

Kinds: sweep cells, config.toml, meta.json, results.csv / .parquet, figures, SHA256SUMS,
cached checkpoints (model.safetensors + model.json), resume state, calibration entries.
Damage: truncation, random bit flips and zeroed bytes (seeded), changed values, and — with
the digest recomputed, as a buggy writer would leave them — removed, duplicated or altered
rows, NaN or scaled controls, missing levels and malformed metadata.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from noisydeq import store
from noisydeq.config import SweepSpec, build
from noisydeq.errors import CorruptArtefact, NoisyDEQError
from noisydeq.hardware.calibration_store import load_entry
from noisydeq.results import RunDir, read_csv
from noisydeq.sweep import CellRunner, Hardware, family_models, run_sweep
from noisydeq.tasks import load_task

SPEC = dict(task="digits", device="rram", noise_site="device", snr_db="0,10,inf", depths=[1],
            chips=1, epochs=1, hidden=8, max_train_samples=128, max_test_samples=40,
            max_rows=40)
FLIPS = 12  # random bit flips per file


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A finished tiny sweep on RRAM (device noise: calibration entries) and its cache."""
    root = tmp_path_factory.mktemp("pristine")
    mp = pytest.MonkeyPatch()
    mp.setenv("NOISYDEQ_CACHE", str(root / "cache"))
    try:
        spec = build(SweepSpec, SPEC)
        res = run_sweep(spec, root / "run", progress=False, threads="1", jobs=1)
        assert res.computed_cells == 2 * 3 and (root / "run" / "SHA256SUMS").is_file()
        yield root, res.rows
    finally:
        mp.undo()


@pytest.fixture
def copy(pristine, tmp_path, monkeypatch):
    """A fresh copy of the pristine run dir and cache (the cache is this test's cache)."""
    root, rows = pristine
    shutil.copytree(root, tmp_path / "w")
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "w" / "cache"))
    return tmp_path / "w" / "run", rows


# ------------------------------------------------------------------ damage generators


def raw_damage(data: bytes, seed: int) -> Iterator[tuple[str, bytes]]:
    """Truncations, single-bit flips and zeroed bytes at seeded random positions."""
    rng = random.Random(seed)
    yield "empty", b""
    yield "truncated to half", data[: len(data) // 2]
    yield "last byte cut", data[:-1]
    for i in range(FLIPS):
        pos, bit = rng.randrange(len(data)), rng.randrange(8)
        b = bytearray(data)
        b[pos] ^= 1 << bit
        yield f"bit {bit} of byte {pos} flipped ({i})", bytes(b)
    pos = rng.randrange(max(1, len(data) - 8))
    b = bytearray(data)
    b[pos : pos + 8] = bytes(len(b[pos : pos + 8]))
    yield f"8 bytes zeroed at {pos}", bytes(b)


class Tally:
    """Counts damaged artefacts and detections per kind (printed with ``-s``)."""

    counts: dict[str, list[int]] = {}

    @classmethod
    def add(cls, kind: str, detected: bool) -> None:
        c = cls.counts.setdefault(kind, [0, 0])
        c[0] += 1
        c[1] += int(detected)


def detected(check: Callable[[], object], path: Path) -> bool:
    """True when ``check`` refuses the damaged ``path`` with an error that names it."""
    try:
        check()
    except CorruptArtefact as err:
        return path.name in str(err)
    except NoisyDEQError as err:  # e.g. config.toml: refused as the run's --out
        return path.name in str(err)
    return False


def damage_all(kind: str, path: Path, check: Callable[[], object], seed: int,
               extra: Iterator[tuple[str, bytes]] = iter(())) -> None:
    original = path.read_bytes()
    missed = []
    for name, data in [*raw_damage(original, seed), *extra]:
        if data == original:
            continue
        path.write_bytes(data)
        ok = detected(check, path)
        Tally.add(kind, ok)
        if not ok:
            missed.append(name)
    path.write_bytes(original)
    check()  # the undamaged file passes
    assert not missed, f"{kind}: undetected damage {missed}"


# ------------------------------------------------------------------------- results


def _runner(run: Path) -> tuple[CellRunner, list]:
    spec = build(SweepSpec, SPEC)
    task = load_task("digits", seed=0)
    return CellRunner(spec, task, RunDir(run), Hardware(spec), torch.device("cpu")), \
        family_models(spec, task, progress=False)


def _load_all(runner: CellRunner, models: list) -> list:
    """Every cell through the sweep's own reader (what run_sweep does before evaluating)."""
    return [r for sm in models for chip in range(runner.spec.chips)
            for lv in runner.chunks for r in runner.load(sm, chip, lv)]


def _resigned(path: Path, change: Callable[[dict], None]) -> bytes:
    data = store.loads_signed(path.read_text(), path)
    change(data)
    return store.dumps_signed(data).encode()


def test_cells(copy):
    run, rows = copy
    runner, models = _runner(run)
    assert _load_all(runner, models) == rows
    cells = sorted((run / "cells").glob("*.json"))
    assert len(cells) == 6
    path = cells[0]

    def rows_op(fn: Callable[[list], list]) -> Callable[[dict], None]:
        def change(d: dict) -> None:
            d["rows"] = fn(d["rows"])
        return change

    def set_value(col: str, value: object) -> Callable[[dict], None]:
        return rows_op(lambda rs: [{**rs[0], col: value}, *rs[1:]])

    semantic = {
        "value changed (digest kept)": path.read_bytes().replace(b'"value": ', b'"value": 1', 1),
        "rows: [] (re-signed)": _resigned(path, rows_op(lambda rs: [])),
        "row duplicated (re-signed)": _resigned(path, rows_op(lambda rs: rs + rs)),
        "row removed (re-signed)": _resigned(path, rows_op(lambda rs: rs[1:])),
        "column missing (re-signed)": _resigned(path, rows_op(
            lambda rs: [{k: v for k, v in r.items() if k != "value"} for r in rs])),
        "extra column (re-signed)": _resigned(path, rows_op(
            lambda rs: [{**r, "note": "x"} for r in rs])),
        "other chip (re-signed)": _resigned(path, set_value("chip", 7)),
        "other SNR (re-signed)": _resigned(path, set_value("snr_db", 99.0)),
        "other model (re-signed)": _resigned(path, set_value("model_id", "deq-d9")),
        "value a string (re-signed)": _resigned(path, set_value("value", "0.9")),
        "n_samples changed (re-signed)": _resigned(path, set_value("n_samples", 39)),
        "other key (re-signed)": _resigned(path, lambda d: d.update(key="x|chip0|0")),
        "older format (re-signed)": _resigned(path, lambda d: d.update(format="noisydeq-cell/1")),
        "not a JSON object": b"[]",
    }
    for i, cell in enumerate(cells):
        extra = iter(semantic.items()) if cell == path else iter(())
        damage_all("cell", cell, lambda: _load_all(runner, models), seed=i, extra=extra)


def test_damaged_cell_refuses_the_sweep_and_keeps_the_table(copy):
    run, _ = copy
    cell = sorted((run / "cells").glob("*.json"))[2]
    cell.write_bytes(_resigned(cell, lambda d: d.update(rows=d["rows"] * 2)))
    table = (run / "results.csv").read_bytes()
    with pytest.raises(CorruptArtefact, match=cell.name + ".*delete it"):
        run_sweep(build(SweepSpec, SPEC), run, progress=False, threads="1", jobs=1)
    assert (run / "results.csv").read_bytes() == table


def test_config_and_meta(copy):
    run, _ = copy
    spec = build(SweepSpec, SPEC)
    check = lambda: RunDir(run).check(spec)  # noqa: E731
    body = store.verify_text((run / "config.toml").read_text(), run / "config.toml")
    damage_all("config.toml", run / "config.toml", check, seed=10, extra=iter({
        # a re-signed config that only grows chips is a valid extension request, not damage;
        # one that changes a cell-defining field is refused
        "hidden changed, re-signed": store.sign_text(
            body.replace("hidden = 8", "hidden = 9")).encode(),
        "value changed, digest kept": (run / "config.toml").read_bytes().replace(
            b"hidden = 8", b"hidden = 9"),
        "digest line removed": body.encode(),
    }.items()))
    meta = run / "meta.json"
    damage_all("meta.json", meta, check, seed=11, extra=iter({
        "value changed, digest kept": meta.read_bytes().replace(b'"resumed"', b'"resumes"')
        if b'"resumed"' in meta.read_bytes() else meta.read_bytes().replace(b"[", b"[7, ", 1),
    }.items()))
    damage_all("identity.json", run / "identity.json", check, seed=12)  # the device's content


def test_table_figures_and_manifest(copy):
    run, rows = copy
    assert read_csv(run / "results.csv") == rows
    csv_text = (run / "results.csv").read_text().splitlines(keepends=True)
    extra = {
        "row removed": "".join(csv_text[:-1]).encode(),
        "row duplicated": "".join(csv_text + csv_text[-1:]).encode(),
        "value changed": "".join(csv_text).replace(",accuracy,", ",accuracy,9", 1).encode(),
    }
    damage_all("results.csv", run / "results.csv", lambda: read_csv(run / "results.csv"),
               seed=20, extra=iter(extra.items()))
    for i, name in enumerate(["results.parquet", "layers.csv", "figures/metric_vs_snr.png",
                              "figures/metric_vs_snr.svg", "figures/metric_vs_depth.png",
                              "figures/metric_vs_snr.csv"]):
        damage_all(name.split("/")[-1].split(".")[-1], run / name,
                   lambda n=name: store.verify_listed(run / n, run), seed=21 + i)
    # table (csv, parquet), layers.csv, config, identity, meta, 4 figures and their 2 CSVs
    assert len(store.verify_manifest(run)) == 12
    damage_all("SHA256SUMS", run / "SHA256SUMS", lambda: store.verify_manifest(run), seed=30)
    (run / "SHA256SUMS").unlink()
    with pytest.raises(CorruptArtefact, match="SHA256SUMS"):
        read_csv(run / "results.csv")


# --------------------------------------------------------------------------- cache


def _flip_weight(path: Path, name: str, how: str) -> bytes:
    """The checkpoint with one float32 of tensor ``name`` sign-flipped or set to NaN, in
    place (the stored digest left as it was)."""
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    start = 8 + n + header[name]["data_offsets"][0]
    (x,) = struct.unpack("<f", raw[start : start + 4])
    raw[start : start + 4] = struct.pack("<f", math.nan if how == "nan" else -x)
    return bytes(raw)


def test_cached_checkpoints(copy):
    run, _ = copy
    models = sorted((run.parent / "cache" / "models").glob("*/model.safetensors"))
    assert len(models) == 2
    for i, path in enumerate(models):
        tensors, meta = store.load_checkpoint(path)
        extra = {
            "sign-flipped weight": _flip_weight(path, "cell.W.weight" if "cell.W.weight"
                                                in tensors else "head.weight", "sign"),
            "NaN weight": _flip_weight(path, "head.weight", "nan"),
        }
        damage_all("model.safetensors", path, lambda p=path: store.load_checkpoint(p), seed=40 + i,
                   extra=iter(extra.items()))
        side = path.with_suffix(".json")
        damage_all("model.json", side, lambda s=side: store.read_signed_json(s), seed=50 + i)


def test_damaged_cache_entries_are_recomputed_to_the_same_values(copy, capsys):
    """A damaged checkpoint and damaged calibration entries are reported and recomputed;
    the sweep (cells deleted, so it evaluates again) gives the pristine table."""
    run, rows = copy
    ckpt = sorted((run.parent / "cache" / "models").glob("*/model.safetensors"))[0]
    ckpt.write_bytes(_flip_weight(ckpt, "head.weight", "sign"))
    entries = sorted((run.parent / "cache" / "calibration").glob("*.json"))
    assert len(entries) == 2
    scaled = entries[0].read_text()
    entries[0].write_text(scaled.replace("[0.0, ", "[0.0, 1").replace("[10.0, ", "[10.0, 9"))
    entries[1].write_bytes(_resigned(entries[1], lambda d: d["layers"][next(iter(d["layers"]))]
                                     .pop()))  # the last level missing
    shutil.rmtree(run / "cells")
    res = run_sweep(build(SweepSpec, SPEC), run, progress=False, threads="1", jobs=1)
    err = capsys.readouterr().err
    assert res.rows == rows
    assert ckpt.name in err and "training the model again" in err
    assert err.count("calibrating again") == 2, err
    assert store.load_checkpoint(ckpt)[1]  # rewritten, valid


def test_calibration_entries(copy):
    run, _ = copy
    spec = build(SweepSpec, SPEC)
    levels = sorted(s for s in spec.snr_db if math.isfinite(s))
    for i, path in enumerate(sorted((run.parent / "cache" / "calibration").glob("*.json"))):
        record = store.read_signed_json(path)
        key, names = record["key"], list(record["layers"])
        check = lambda p=path, k=key, n=names: load_entry(p, k, n, levels)  # noqa: E731
        assert check() is not None
        first = names[0]

        def set_control(value: float, layer: str = first) -> Callable[[dict], None]:
            def change(d: dict) -> None:  # the control of the first SNR level
                entry = next(e for e in d["layers"][layer] if not isinstance(e[0], str))
                entry[1] = value
            return change

        def drop_level(d: dict, layer: str = first) -> None:
            d["layers"][layer].pop()

        def drop_layer(d: dict, layer: str = first) -> None:
            d["layers"].pop(layer)

        extra = {
            "NaN control (re-signed)": _resigned(path, set_control(math.nan)),
            "control scaled x10 (re-signed digest kept)": path.read_bytes().replace(
                b"]], ", b"0]], ", 1),
            "inf control (re-signed)": _resigned(path, set_control(math.inf)),
            "level missing (re-signed)": _resigned(path, drop_level),
            "layer missing (re-signed)": _resigned(path, drop_layer),
            "other key (re-signed)": _resigned(path, lambda d: d.update(key="0" * 32)),
            "layers a list (re-signed)": _resigned(path, lambda d: d.update(layers=[1])),
        }
        damage_all("calibration entry", path, check, seed=60 + i, extra=iter(extra.items()))


def test_resume_state(tmp_path, capsys):
    """A damaged resume state is reported and training starts again, ending with the
    weights of an uninterrupted run; a finished run leaves no resume state behind."""
    from noisydeq.config import ModelSpec, TrainSpec
    from noisydeq.families import build_member
    from noisydeq.train import RESUME_FILE, train_model

    task = load_task("digits", seed=0)
    spec = TrainSpec.preset("quick", "ffw", epochs=2, max_train_samples=64)
    mspec = ModelSpec(kind="ffw", in_features=64, out_features=10, width=6, depth=1)
    full = train_model(build_member(mspec, 0), task, spec, out_dir=tmp_path / "full")
    assert not (tmp_path / "full" / RESUME_FILE).exists()

    def stop(epoch, _record):
        if epoch == 0:
            raise KeyboardInterrupt

    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train_model(build_member(mspec, 0), task, spec, out_dir=out, on_epoch=stop)
    resume = out / RESUME_FILE
    good = resume.read_bytes()
    tensors, meta = store.load_tensors(resume)
    crafted = {
        "epoch beyond the run (re-saved)": {**meta, "epoch": 9},
        "epoch text (re-saved)": {**meta, "epoch": "1"},
        "history missing (re-saved)": {**meta, "history": None},
        "optimizer malformed (re-saved)": {**meta, "optimizer": {"param_groups": 3}},
        "training seconds text (re-saved)": {**meta, "seconds": "12"},
        "training seconds negative (re-saved)": {**meta, "seconds": -1.0},
    }
    extra = []
    for name, m in crafted.items():
        store.save_tensors(resume, tensors, {k: v for k, v in m.items()
                                             if k not in ("format", "version")})
        extra.append((name, resume.read_bytes()))
    resume.write_bytes(good)

    def check() -> None:  # the trainer's own reader, on a throw-away copy of the model
        from noisydeq.train import _load_resume, run_config

        model = build_member(mspec, 0)
        opt = torch.optim.Adam(model.parameters())
        cfg = run_config(model, task, spec, torch.device("cpu"))
        _load_resume(resume, model, opt, cfg, spec.epochs)

    damage_all("resume.safetensors", resume, check, seed=70, extra=iter(extra))
    resume.write_bytes(next(d for n, d in raw_damage(good, 71) if "flipped" in n))
    again = train_model(build_member(mspec, 0), task, spec, out_dir=out)
    assert "starting the training again" in capsys.readouterr().err
    assert again.start_epoch == 0 and not resume.exists()
    for k, v in full.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[k], v)


def test_every_damage_was_detected():
    """Runs last in this module (pytest keeps file order): the tally of the tests above."""
    if not Tally.counts:
        pytest.skip("run with the rest of the module")
    total = sum(c[0] for c in Tally.counts.values())
    found = sum(c[1] for c in Tally.counts.values())
    print("\ncorruption detected per kind:", {k: f"{d}/{n}" for k, (n, d) in
                                              sorted(Tally.counts.items())})
    assert found == total and len(Tally.counts) >= 10 and total >= 300

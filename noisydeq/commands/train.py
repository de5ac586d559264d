"""``noisydeq train``: train one DEQ/FFW, or a depth-matched family (``--depths``).

One model goes to ``--out`` (default ``runs/train/<kind>-d<depth>-w<width>-s<seed>``):
``model.safetensors`` + ``model.json`` (full resolved config and its hash), with a
per-epoch ``resume.safetensors`` that ``--resume`` continues from. A family goes into the
model cache (``--out`` overrides it; default ``$NOISYDEQ_CACHE`` or the user cache dir), the
same cache ``noisydeq sweep`` reuses.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click
import torch

from noisydeq.config import FamilySpec, ModelSpec, NoiseSpec, TrainSpec, build, parse_snr_value
from noisydeq.errors import NoisyDEQError
from noisydeq.runtime import resolve_torch_device


def _writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NoisyDEQError(f"--out: cannot create directory {path} ({err.strerror})") from None
    if not path.is_dir():
        raise NoisyDEQError(f"--out: {path} is not a directory")
    probe = path / ".noisydeq-write-test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise NoisyDEQError(f"--out: directory {path} is not writable ({err.strerror})") from None
    return path


def _snr(text: str, option: str) -> float:
    try:
        return parse_snr_value(text)
    except NoisyDEQError as err:
        raise NoisyDEQError(f"{option}: {err}") from None


def _noise(train_snr: str, site: str) -> NoiseSpec:
    snr = _snr(train_snr, "--train-snr")
    if math.isinf(snr):
        return NoiseSpec()
    return build(NoiseSpec, {"site": site, "kind": "multiplicative", "snr_db": snr},
                 where="--train-snr")


def _fmt(metric: float, name: str) -> str:
    return f"{metric:.4f}" if name == "accuracy" else f"{metric:.3e}"


@click.command("train")
@click.option("--task", default="digits", show_default=True,
              help="digits, regression1d, mnist or mnist10k.")
@click.option("--data-dir", default=None, help="MNIST directory (else $NOISYDEQ_MNIST_DIR).")
@click.option("--kind", type=click.Choice(["deq", "ffw"]), default="deq", show_default=True,
              help="Model kind (single-model mode).")
@click.option("--width", type=int, default=128, show_default=True,
              help="FFW layer width; DEQ width (or the FFW width it is matched to).")
@click.option("--depth", type=int, default=1, show_default=True,
              help="FFW layers; for a DEQ the FFW depth whose parameter count it matches.")
@click.option("--depths", default=None,
              help="Train a matched DEQ/FFW family at these FFW depths, e.g. 1,3,5,7.")
@click.option("--preset", default="quick", show_default=True, help="quick or paper (Tables 1-2).")
@click.option("--epochs", type=click.IntRange(min=0), default=None,
              help="Epochs (default: the preset's).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Mini-batch size (default: the preset's).")
@click.option("--lr", type=float, default=None, help="Adam learning rate (default 1e-3).")
@click.option("--train-snr", default="inf", show_default=True,
              help="Training noise SNR in dB (paper: 0, 10 or inf = none).")
@click.option("--train-site", type=click.Choice(["signal", "state", "input"]), default="signal",
              show_default=True, help="Where training noise is injected (Eq. 3-4).")
@click.option("--input-act", type=click.Choice(["relu", "silu", "identity"]), default="relu",
              show_default=True, help="Input projection nonlinearity.")
@click.option("--device", default=None,
              help="Hardware model in the loop (preset name or .toml), e.g. rram, photonic.")
@click.option("--device-snr", default=None, help="Calibrate the training device to this SNR.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--torch-device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--out", default=None, help="Output directory (family: the model cache).")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Continue an interrupted run / reuse a finished one in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def command(**opts: Any) -> None:
    """Train one model or a depth-matched DEQ/FFW family on a task."""
    from noisydeq.tasks import check_task_name, load_task

    check_task_name(opts["task"])
    dev = resolve_torch_device(opts["torch_device"])
    noise = _noise(opts["train_snr"], opts["train_site"])
    overrides: dict[str, Any] = {"seed": opts["seed"]}
    for key in ("epochs", "batch_size", "lr"):
        if opts[key] is not None:
            overrides[key] = opts[key]
    if opts["device"] is not None:
        from noisydeq.hardware import load_spec

        load_spec(opts["device"])  # unknown device: one line, before any work
        overrides["device"] = opts["device"]
    if opts["device_snr"] is not None:
        overrides["device_snr_db"] = _snr(opts["device_snr"], "--device-snr")
    out = Path(opts["out"]).expanduser() if opts["out"] else None
    if out is not None:
        _writable_dir(out)

    if opts["depths"] is not None:
        fspec = build(FamilySpec, {
            "task": opts["task"], "data_dir": opts["data_dir"], "depths": opts["depths"],
            "hidden": opts["width"], "input_act": opts["input_act"], "seed": opts["seed"],
            "train_preset": opts["preset"], "train_snr_db": noise.snr_db,
            "train_site": opts["train_site"],
            "train": {k: v for k, v in overrides.items() if k != "seed"},
        }, where="train")
        fspec.train_spec("deq")  # validate the preset + overrides before loading data
        task = load_task(opts["task"], data_dir=opts["data_dir"], seed=opts["seed"])
        _notice(task)
        _family(fspec, task, out, dev, opts)
        return

    for name in ("width", "depth"):
        if opts[name] < 1:
            raise NoisyDEQError(f"--{name}: must be a positive integer, got {opts[name]}")
    tspec = TrainSpec.preset(opts["preset"], opts["kind"], noise, **overrides)
    task = load_task(opts["task"], data_dir=opts["data_dir"], seed=opts["seed"])
    _notice(task)
    _single(tspec, task, out, dev, opts)


def _notice(task: Any) -> None:
    if task.notice:
        click.echo(f"noisydeq: note: {task.notice}", err=True)


def _single(tspec: TrainSpec, task: Any, out: Path | None, dev: torch.device, opts: dict) -> None:
    from noisydeq.families import build_member
    from noisydeq.models.extra import fit_to_task
    from noisydeq.train import train_model

    fit_to_task({}, task)  # a per-position task (prefix_sums, mazes) needs another cell
    mspec = build(ModelSpec, {
        "kind": opts["kind"], "in_features": task.in_features,
        "out_features": task.out_features, "width": opts["width"], "depth": opts["depth"],
        "input_act": opts["input_act"],
    }, where="model")
    model = build_member(mspec, opts["seed"])
    if out is None:
        out = _writable_dir(
            Path("runs") / "train" / f"{mspec.kind}-d{mspec.depth}-w{model.width}-s{opts['seed']}"
        )
    res = train_model(model, task, tspec, out_dir=out, resume=opts["resume"],
                      torch_device=dev, quiet=opts["quiet"], desc=f"{mspec.kind}")
    row = {"kind": mspec.kind, "depth": mspec.depth, "width": int(model.width),
           "params": sum(p.numel() for p in model.parameters()), "task": task.name,
           "metric": task.metric_name, "value": res.test_metric, "seconds": res.seconds,
           "loaded": res.loaded, "config_hash": res.config_hash, "path": str(res.path)}
    _report([row], opts["as_json"])


def _family(fspec: FamilySpec, task: Any, out: Path | None, dev: torch.device, opts: dict) -> None:
    from noisydeq.families import cache_root, train_family

    fam = train_family(fspec, task, cache_dir=out, torch_device=dev, quiet=opts["quiet"])
    root = cache_root(out) / "models"
    rows = [
        {"kind": m.kind, "depth": m.depth, "width": m.width, "params": m.params,
         "task": task.name, "metric": task.metric_name, "value": m.result.test_metric,
         "seconds": m.result.seconds, "loaded": m.cached, "config_hash": m.key,
         "path": str(root / m.key / "model.safetensors")}
        for m in fam.members
    ]
    _report(rows, opts["as_json"])
    if not opts["as_json"]:
        click.echo(f"family: {len(rows)} models in {fam.seconds:.1f} s "
                   f"({fam.trained_seconds:.1f} s training); cache {root}")


def _report(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2, allow_nan=True))
        return
    click.echo(f"{'kind':<4} {'depth':>5} {'width':>5} {'params':>8}  {'metric':<8} "
               f"{'value':>9} {'time':>7}  path")
    for r in rows:
        how = "cached" if r["loaded"] else f"{r['seconds']:.1f}s"
        click.echo(f"{r['kind']:<4} {r['depth']:>5} {r['width']:>5} {r['params']:>8}  "
                   f"{r['metric']:<8} {_fmt(r['value'], r['metric']):>9} {how:>7}  {r['path']}")

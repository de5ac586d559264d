"""A tiny trained DEQ/FFW family on digits for the analysis CLI tests (seconds to build)."""

import contextlib
import csv
import os
from pathlib import Path

import torch

from noisydeq.config import ModelSpec, TrainSpec
from noisydeq.models.factory import build_model
from noisydeq.tasks import load_task
from noisydeq.train import train_model
from tests.cli_helpers import run_cli as run  # noqa: F401  (the analysis tests import it from here)


def make_family(root: Path, depths=(1, 3), hidden=6, epochs=1, deq_width=None) -> Path:
    """Train DEQ/FFW pairs (``hidden`` units, matched DEQ widths) into ``root/<kind>-d<n>``."""
    task = load_task("digits", seed=0)
    for depth in depths:
        for kind in ("deq", "ffw"):
            torch.manual_seed(depth)
            spec = ModelSpec(kind=kind, in_features=task.in_features,
                             out_features=task.out_features, width=hidden, depth=depth,
                             matched=deq_width is None)
            if kind == "deq" and deq_width is not None:
                spec = spec.model_copy(update={"width": deq_width})
            model = build_model(spec)
            train = TrainSpec.preset("quick", kind, epochs=epochs, max_train_samples=256)
            train_model(model, task, train, out_dir=root / f"{kind}-d{depth}")
    return root


def rows(path):
    """The rows of a CSV file as dicts."""
    with open(path) as fh:
        return list(csv.DictReader(fh))


@contextlib.contextmanager
def tiny_sweep(root: Path, *args: str):
    """``noisydeq sweep`` (digits, one epoch, hidden 16, 256 training samples, ``args``) into
    ``root/run`` with its own model cache ``root/cache`` (one thread); yields the run dir
    with the cache still set, then restores the environment."""
    from noisydeq.cli import main

    saved_env, saved_threads = os.environ.get("NOISYDEQ_CACHE"), torch.get_num_threads()
    os.environ["NOISYDEQ_CACHE"] = str(root / "cache")
    torch.set_num_threads(1)
    try:
        try:
            main(["sweep", "--task", "digits", "--epochs", "1", "--set", "hidden=16",
                  "--set", "max_train_samples=256", "--quiet", *args, "--out",
                  str(root / "run")])
        except SystemExit as e:
            assert e.code == 0
        yield root / "run"
    finally:
        torch.set_num_threads(saved_threads)
        if saved_env is None:
            os.environ.pop("NOISYDEQ_CACHE", None)
        else:
            os.environ["NOISYDEQ_CACHE"] = saved_env

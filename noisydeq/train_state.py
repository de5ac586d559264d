"""The state of a training run (:mod:`noisydeq.train`): its random draws and its resume file.

:class:`_Rng` addresses every random draw of a run by (seed, what, epoch, sample)
(counter-based, :mod:`noisydeq.rng`), so nothing of a generator needs saving;
:func:`_save_resume` / :func:`_load_resume` write and read the state after an epoch
(weights, Adam moments, history, and the training time spent so far over every run that
led to it: ``seconds``) through :mod:`noisydeq.store`, digest-checked, and a damaged or
malformed state is a :class:`~noisydeq.errors.CorruptArtefact`, never used.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from noisydeq import store
from noisydeq.errors import CorruptArtefact
from noisydeq.noise import NoiseStream, StreamTable, derive_seed


class _Rng:
    """Every random draw of a training run, addressed by (seed, what, epoch, sample).

    Counter-based (:mod:`noisydeq.rng`): the data order of an epoch, and the training noise,
    device noise, random thresholds and Hutchinson probes of a sample in that epoch are pure
    functions of their address — independent of the batch a sample lands in, and with no
    generator state to save for resume.
    """

    def __init__(self, seed: int, dev: torch.device) -> None:
        self.seed, self.dev = seed, dev
        #: the current epoch's row tables, one per source (:meth:`NoiseStream.rows_of`) or
        #: per group of sources (:meth:`streams`)
        self._tables: dict[tuple, NoiseStream | StreamTable] = {}

    def permutation(self, n: int, epoch: int) -> Tensor:
        """The data order of ``epoch``: indices sorted by one uniform per sample (53 bits)."""
        key = derive_seed(self.seed, "train", "shuffle", epoch)
        u = NoiseStream.from_seed(key).rand((n,), torch.float64, torch.device("cpu"))
        return torch.argsort(u, stable=True)

    def stream(self, what: str, epoch: int, samples: Tensor, *name: str) -> NoiseStream:
        """The ``what`` source (noise, device, threshold) of ``epoch`` for the rows
        ``samples`` (training-set indices); ``name``: e.g. a device layer's."""
        table = self._table((what, epoch, *name), lambda: NoiseStream.from_seed(
            derive_seed(self.seed, "train", what, epoch, *name), self.dev))
        assert isinstance(table, NoiseStream)
        # == NoiseStream.from_seed(key, dev, samples), its rows set up once per epoch
        return table.rows_of(samples)

    def streams(self, what: str, epoch: int, samples: Tensor,
                names: Sequence[str]) -> list[NoiseStream]:
        """``[self.stream(what, epoch, samples, name) for name in names]`` (e.g. every
        device layer's source), the rows of all of them taken by one index from one table
        per epoch (:class:`noisydeq.noise.StreamTable`): the same streams."""
        table = self._table((what, epoch, tuple(names)), lambda: NoiseStream.table(
            [derive_seed(self.seed, "train", what, epoch, name) for name in names], self.dev))
        assert isinstance(table, StreamTable)
        return table.streams(samples)

    def _table(self, address: tuple, make: Callable[[], NoiseStream | StreamTable]
               ) -> NoiseStream | StreamTable:
        """The row table of ``address`` (``(what, epoch, …)``), made by ``make`` the first
        time it is asked for in its epoch; a new epoch drops the last one's tables."""
        table = self._tables.get(address)
        if table is None:
            if any(k[1] != address[1] for k in self._tables):
                self._tables.clear()
            table = self._tables[address] = make()
        return table


def _save_resume(
    path: Path, net: nn.Module, opt: torch.optim.Optimizer, config: dict,
    epoch: int, history: list[dict[str, float]], extra: dict[str, Tensor] | None = None,
    seconds: float = 0.0,
) -> None:
    """The state after ``epoch`` epochs; ``seconds``: the training time spent to reach it,
    summed over the runs that led to it (a resumed run adds its own)."""
    opt_tensors, opt_info = store.flatten_optimizer(opt.state_dict())
    tensors = {f"model/{k}": v for k, v in net.state_dict().items()}
    tensors.update(opt_tensors)
    tensors.update(extra or {})
    meta = {"config": config, "config_hash": store.config_hash(config), "epoch": epoch,
            "history": history, "optimizer": opt_info, "seconds": float(seconds)}
    store.save_tensors(path, tensors, meta)


def _load_resume(
    path: Path, net: nn.Module, opt: torch.optim.Optimizer, config: dict, epochs: int,
) -> tuple[int, list[dict[str, float]], dict[str, Tensor], float]:
    """Continue from ``path`` (epoch, history, every saved tensor, training seconds so far);
    a damaged or malformed state is a :class:`CorruptArtefact` and leaves ``net`` and
    ``opt`` as they were. A state written before the seconds were recorded counts 0 s."""
    tensors, meta = store.load_tensors(path)
    store.check_config(meta, config, path)
    saved = (copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict()))
    try:
        epoch, history = meta["epoch"], meta.get("history", [])
        seconds = meta.get("seconds", 0.0)
        if (isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= epochs
                or not isinstance(history, list) or len(history) != epoch):
            raise ValueError(f"epoch {epoch!r} with {type(history).__name__} history")
        if (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                or not math.isfinite(seconds) or seconds < 0):
            raise ValueError(f"training seconds {seconds!r}")
        store.load_into(net, {k[6:]: v for k, v in tensors.items() if k.startswith("model/")},
                        path)
        opt.load_state_dict(store.unflatten_optimizer(tensors, meta["optimizer"]))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as err:
        net.load_state_dict(saved[0])
        opt.load_state_dict(saved[1])
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CorruptArtefact(path, f"holds a malformed resume state ({reason})") from None
    return epoch, list(history), tensors, float(seconds)

"""Certification of many models, here or on a Ray cluster (``noisydeq certify --backend
ray``: one task per (model, ε)).

The driver puts the test tensors and the :class:`~noisydeq.certify.spec.CertifySpec` into
Ray's object store once and each model once (with its envelopes and margins from
:func:`noisydeq.analysis.certified.plan`, computed and checked on the driver before any
work); a task runs :func:`~noisydeq.analysis.certified.certify_member` for its one radius
and returns that radius's rows (one per envelope). The driver puts them in the local order
(model, envelope, ε) and alone writes the table. Certification writes no cells (a run is
not resumable, on either backend): a worker that dies is retried by Ray
(:data:`noisydeq.cluster.MAX_RETRIES`); an exception in a task ends the run with its one line.

Same rows as a local run with one torch thread: bounds are computed in float64 and each
radius's PGD draws from ``derive_seed(seed, "pgd", model, ε)`` and the sample index, so
nothing depends on which process certifies which radius; only ``seconds`` (the wall time
of the row) differs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from noisydeq import cluster
from noisydeq.analysis.certified import Plan, certify_member, model_label, row_line
from noisydeq.certify.spec import CertifySpec
from noisydeq.cluster import Backend


def certify_radius(token: str, inputs: list[Any], model: list[Any], i: int,
                   eps: float) -> list[dict[str, Any]]:
    """A Ray task: the rows (one per envelope) of model ``i`` at radius ``eps``.
    ``inputs`` / ``model`` hold an object reference each (in a list, so Ray passes the
    reference and the worker unpacks it once): (x, y, spec) and (member, plans)."""
    torch.set_num_threads(1)
    x, y, spec = cluster.kept(token, "inputs", inputs, run=True)
    member, plans = cluster.kept(token, f"model/{i}", model)
    one = spec.model_copy(update={"eps": [eps]})
    return certify_member(member, x, y, one, None, plans)


def certify_members(
    members: Sequence[Any], plans: Sequence[list[Plan]], x: torch.Tensor, y: torch.Tensor,
    spec: CertifySpec, echo: Callable[[str], None] | None = None,
    backend: Backend | None = None,
) -> list[dict[str, Any]]:
    """Rows of every member (in order: member, envelope, ε; ``plans`` from
    :func:`~noisydeq.analysis.certified.plan`), in this process or — ``backend`` a Ray
    :class:`~noisydeq.cluster.Backend`, its cluster joined — one Ray task per (member, ε)
    (:func:`certify_on_ray`: the same rows but ``seconds``)."""
    if backend is not None and backend.ray:
        return certify_on_ray(members, plans, x, y, spec, echo)
    rows: list[dict[str, Any]] = []
    for m, pl in zip(members, plans, strict=True):
        rows += certify_member(m, x, y, spec, echo, pl)
    return rows


def certify_on_ray(
    members: Sequence[Any], plans: Sequence[list[Plan]], x: torch.Tensor, y: torch.Tensor,
    spec: CertifySpec, echo: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """The rows of :func:`~noisydeq.analysis.certified.certify_members` computed on the
    connected Ray cluster (module docstring), echoed as their tasks finish."""
    import ray


    ref = ray.put((x.cpu(), y.cpu(), spec))
    token = ref.hex()
    model_refs = [ray.put((m, list(pl))) for m, pl in zip(members, plans, strict=True)]
    fn = cluster.remote(certify_radius, "noisydeq-certify-radius")
    order = sorted(range(len(members)), key=lambda i: (-int(members[i].params), i))
    futures = {fn.remote(token, [ref], [model_refs[i]], i, e): (i, e)
               for i in order for e in spec.eps}
    got: dict[tuple[int, float], list[dict[str, Any]]] = {}
    for key, rows in cluster.finished(
            futures, lambda k: f"certifying {model_label(members[k[0]])} at ε {k[1]:g}"):
        got[key] = rows
        if echo is not None:
            for r in rows:
                echo(row_line(r))
    return [got[(i, e)][p] for i, pl in enumerate(plans) for p in range(len(pl))
            for e in spec.eps]

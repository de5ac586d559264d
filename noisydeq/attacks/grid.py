"""The attack grid of ``noisydeq attack`` (main paper App. D.3, Fig. 14-17; closer-look
Tables 1-3): which attacks at which strengths, against which estimators and defences, on
which device and SNR levels. :class:`AttackRunSpec` is recorded in the run directory's
``config.toml``; :func:`expand` turns it into :class:`GridPoint` s.

Attack families (``attacks``), each a curve of accuracy against its strength:

=================  ==========================================================
``pgd-eps``        PGD-s for each s in ``pgd_steps`` (default 10, 50) over ``eps``
``pgd-steps``      PGD at ``steps_eps`` over ``steps``
``ifgsm``          I-FGSM-10 over ``eps``
``aa``, ``aa-rand``  AutoAttack standard / rand over ``eps``
``apgd-ce``, ``apgd-t``, ``fab``, ``square``  one AutoAttack part over ``eps``
``speckle``        x + x·n, n ~ N(0, σ²), over ``sigma``
``salt-pepper``    fraction p of pixels set to 0/1, over ``fraction``
=================  ==========================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from noisydeq.attacks.spec import NOISE_ATTACKS, AttackSpec
from noisydeq.specs.attack_names import (  # noqa: F401 (FAMILIES, ALIASES: re-exported)
    ALIASES,
    FAMILIES,
    attack_families,
)
from noisydeq.specs.attack_run import (  # noqa: F401 (the grid spec: re-exported)
    DEFAULT_ATTACKS,
    MAX_POINTS,
    MODES,
    AttackRunSpec,
)
from noisydeq.specs.base import build


@dataclass(frozen=True)
class GridPoint:
    """One attack at one strength: its curve (``family``, ``label``) and x-value."""

    family: str
    label: str  # curve name, e.g. "PGD-10", "AA", "speckle"
    x_name: str  # "eps", "steps", "sigma", "fraction"
    x: float
    attack: AttackSpec

    @property
    def key(self) -> str:
        a = self.attack
        return (f"{self.family}|{a.name}|{a.norm}|{a.eps!r}|{a.steps}|{a.alpha!r}|"
                f"{a.restarts}|{a.eot}|{a.queries}|{a.random_start}")

    @property
    def queries_model(self) -> bool:
        """The attack runs the model (gradient or query attacks; not the noise attacks)."""
        return self.attack.name not in NOISE_ATTACKS

    @property
    def uses_model_gradient(self) -> bool:
        """The attack follows a gradient, so it has a cell per estimator; Square (queries
        only) and the noise attacks have one cell, estimator ``none``."""
        return self.attack.needs_gradient


def expand(spec: AttackRunSpec) -> list[GridPoint]:
    """Every (attack, strength) point of the grid, in the order of ``spec.attacks``."""
    common = dict(norm=spec.norm, alpha=spec.alpha, restarts=spec.restarts, eot=spec.eot,
                  queries=spec.queries)

    def att(**kw: Any) -> AttackSpec:
        return build(AttackSpec, {**common, **kw}, where="attack")

    out: list[GridPoint] = []
    for fam in spec.attacks:
        if fam == "pgd-eps":
            for s in spec.pgd_steps:
                out += [GridPoint(fam, f"PGD-{s}", "eps", e, att(name="pgd", eps=e, steps=s))
                        for e in spec.eps]
        elif fam == "pgd-steps":
            out += [GridPoint(fam, f"PGD ε={spec.steps_eps:g}", "steps", float(s),
                              att(name="pgd", eps=spec.steps_eps, steps=s)) for s in spec.steps]
        elif fam == "ifgsm":
            out += [GridPoint(fam, "I-FGSM-10", "eps", e, att(name="ifgsm", eps=e, steps=10))
                    for e in spec.eps]
        elif fam == "speckle":
            out += [GridPoint(fam, "speckle", "sigma", s,
                              build(AttackSpec, {"name": "speckle", "eps": s}, where="attack"))
                    for s in spec.sigma]
        elif fam == "salt-pepper":
            out += [GridPoint(fam, "salt-pepper", "fraction", p,
                              build(AttackSpec, {"name": "salt-pepper", "eps": p},
                                    where="attack"))
                    for p in spec.fraction]
        else:
            label = {"aa": "AA", "aa-rand": "AA-rand"}.get(fam, fam)
            out += [GridPoint(fam, label, "eps", e, att(name=fam, eps=e)) for e in spec.eps]
    return out

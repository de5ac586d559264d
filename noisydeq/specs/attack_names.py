"""The attack families ``noisydeq attack --attacks`` names (the curves of
:mod:`noisydeq.attacks.grid`, main paper App. D.3), checked without torch: the command
refuses a bad name before its heavy imports."""

from __future__ import annotations

from typing import Any

from noisydeq.specs.base import suggest_name

FAMILIES = ("pgd-eps", "pgd-steps", "ifgsm", "aa", "aa-rand", "apgd-ce", "apgd-t", "fab",
            "square", "speckle", "salt-pepper")
#: other spellings taken for one attack family (docs/robustness.md); a bare ``pgd`` is not
#: one: it could mean either PGD curve, and is refused naming both
ALIASES = {"autoattack": "aa", "sp": "salt-pepper", "salt-and-pepper": "salt-pepper"}


def attack_families(v: Any) -> list[str]:
    """The attack families of a comma list (or list) of names, in order (an alias as its
    name: a spec refuses one given twice, :data:`~noisydeq.specs.base.StrictModel.NO_REPEATS`);
    ValueError naming the allowed ones for an unknown or ambiguous name."""
    if isinstance(v, str):
        v = [p.strip() for p in v.split(",") if p.strip()]
    out = []
    allowed = f"(allowed: {', '.join(FAMILIES)})"
    for a in v or []:
        a = ALIASES.get(str(a).lower(), str(a).lower())
        if a == "pgd":
            raise ValueError("'pgd' names two curves: 'pgd-eps' (PGD over --eps) or "
                             f"'pgd-steps' (PGD over --steps) {allowed}")
        if a not in FAMILIES:
            raise ValueError(suggest_name("attack", a, FAMILIES))
        out.append(a)
    if not out:
        raise ValueError("attacks must name at least one attack")
    return out

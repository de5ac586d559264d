"""Adversarial training of DEQs and FFWs (main paper §4.2, App. C-E.3; regulation paper
§3.3): PGD-AT and TRADES through the attack suite's PGD with the DEQ gradient of App. C
(Eq. 55), random intermediate states (Eq. 10), checkpoint selection by validation PGD-10,
and the optimiser of Tables 5-6 — used by :func:`noisydeq.train.train_model` through
:class:`~noisydeq.adversarial.hooks.TrainingHooks`.

Modules: ``objective`` (the batch loss), ``selection`` (validation PGD-10, best weights),
``hooks`` (what the training loop calls).
"""

from noisydeq.adversarial.hooks import TrainingHooks, check_model, needs_hooks
from noisydeq.adversarial.objective import Objective, trades_loss

__all__ = ["Objective", "TrainingHooks", "check_model", "needs_hooks", "trades_loss"]

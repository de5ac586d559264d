"""DEQ and feed-forward models built from the paper's unit cell (Eq. 57) and conv cells.

Public API (docs/architecture.md): ``MLPCell``, ``DEQ``, ``FFW``, ``ConvCell``, ``ConvDEQ``,
``ConvFFW``, ``LyaDEQ``, ``matched_width``, ``paper_solver``, ``ModelOutput``, ``build_model``;
the cells beyond Eq. 57 (App. E.1/E.4): ``SpatialDEQ``/``SpatialFFW`` (conv1d, residual; a
class per position), ``StackDEQ``/``StackFFW`` (several tanh layers per cell),
``MDEQ``/``MultiscaleFFW``, and ``IterationBudget`` (test iterations growing with the problem
size).
"""

from noisydeq.models.base import ModelOutput
from noisydeq.models.budget import IterationBudget
from noisydeq.models.cells import InputProjection, MLPCell, TanhLayer
from noisydeq.models.conv import ConvCell, ConvDEQ, ConvFFW, ConvTanhLayer
from noisydeq.models.deq import DEQ, paper_solver
from noisydeq.models.factory import build_model, resolved_width
from noisydeq.models.ffw import FFW
from noisydeq.models.lyapunov import LyaDEQ
from noisydeq.models.matching import PAPER_DEPTHS, PAPER_WIDTHS, matched_width
from noisydeq.models.mdeq import MDEQ, MultiscaleFFW
from noisydeq.models.spatial import SpatialDEQ, SpatialFFW
from noisydeq.models.stack import StackDEQ, StackFFW

__all__ = [
    "DEQ",
    "FFW",
    "MDEQ",
    "PAPER_DEPTHS",
    "PAPER_WIDTHS",
    "ConvCell",
    "ConvDEQ",
    "ConvFFW",
    "ConvTanhLayer",
    "InputProjection",
    "IterationBudget",
    "LyaDEQ",
    "MLPCell",
    "ModelOutput",
    "MultiscaleFFW",
    "SpatialDEQ",
    "SpatialFFW",
    "StackDEQ",
    "StackFFW",
    "TanhLayer",
    "build_model",
    "matched_width",
    "paper_solver",
    "resolved_width",
]

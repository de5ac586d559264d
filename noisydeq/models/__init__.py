"""DEQ and feed-forward models built from the paper's unit cell (Eq. 57) and conv cells.

Public API (docs/architecture.md): ``MLPCell``, ``DEQ``, ``FFW``, ``ConvCell``, ``ConvDEQ``,
``ConvFFW``, ``LyaDEQ``, ``matched_width``, ``paper_solver``, ``ModelOutput``, ``build_model``.
"""

from noisydeq.models.base import ModelOutput
from noisydeq.models.cells import InputProjection, MLPCell, TanhLayer
from noisydeq.models.conv import ConvCell, ConvDEQ, ConvFFW, ConvTanhLayer
from noisydeq.models.deq import DEQ, paper_solver
from noisydeq.models.factory import build_model, resolved_width
from noisydeq.models.ffw import FFW
from noisydeq.models.lyapunov import LyaDEQ
from noisydeq.models.matching import PAPER_DEPTHS, PAPER_WIDTHS, matched_width

__all__ = [
    "DEQ",
    "FFW",
    "PAPER_DEPTHS",
    "PAPER_WIDTHS",
    "ConvCell",
    "ConvDEQ",
    "ConvFFW",
    "ConvTanhLayer",
    "InputProjection",
    "LyaDEQ",
    "MLPCell",
    "ModelOutput",
    "TanhLayer",
    "build_model",
    "matched_width",
    "paper_solver",
    "resolved_width",
]

"""Studies: named models × test sizes × test noise × test solvers (``noisydeq study``).

The shape of the paper's algorithmic extrapolation experiments (App. D.4, Fig. 18) and of
its MDEQ solver and width comparisons (Fig. 1e, Fig. 6); see :mod:`noisydeq.specs.study`.
"""

from noisydeq.specs.study import StudyFile, StudySpec
from noisydeq.studies.runner import StudyResult, run_study

__all__ = ["StudyFile", "StudyResult", "StudySpec", "run_study"]

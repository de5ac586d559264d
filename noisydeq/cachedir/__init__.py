"""The on-disk cache (``$NOISYDEQ_CACHE``) as a whole, for ``noisydeq cache``: what it holds
(:mod:`~noisydeq.cachedir.inventory`), which entries no run of this code can hit again
(:mod:`~noisydeq.cachedir.current`), and deleting entries without hurting a run that uses
them (:mod:`~noisydeq.cachedir.prune`). Reads files only: no torch.
"""

#: the kinds of entries, each a directory of the cache (``code``: the code fingerprint's
#: memo, :mod:`noisydeq.fingerprint`)
KINDS = ("models", "calibration", "chips", "figures", "code")

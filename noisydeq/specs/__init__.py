"""The specs by domain, from the ground up (the public re-export is :mod:`noisydeq.config`).

``base`` (strict pydantic base, one-line errors, choices) → ``toml`` (load/dump) →
``noise`` (SNR grammar, :class:`NoiseSpec`), ``solver``, ``model`` → ``cell`` →
``device`` (a sweep's device choices), ``optimizer`` (a training run's options) →
``training`` (:class:`TrainSpec` and its presets) → ``family`` → ``sweep`` →
``experiment``, ``certify`` (a certification run and its experiment files);
``attack_names`` (the attack families ``noisydeq attack`` names) and
``task_names`` (the tasks ``load_task`` loads) stand alone. Each module imports only
modules to its left; none imports torch.
"""

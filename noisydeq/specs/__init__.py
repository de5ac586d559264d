"""The specs by domain, from the ground up (the public re-export is :mod:`noisydeq.config`).

``base`` (strict pydantic base, one-line errors, choices) → ``toml`` (load/dump) →
``noise`` (SNR grammar, :class:`NoiseSpec`), ``solver``, ``model`` → ``cell`` →
``device`` (a sweep's device choices), ``device_kinds`` (one spec per device kind) →
``device_presets`` (the shipped TOML presets, ``load_spec``), ``optimizer`` (a training
run's options) →
``training`` (:class:`TrainSpec` and its presets) → ``family`` → ``sweep`` →
``experiment``, ``certify`` (a certification run and its experiment files);
``entropy`` (input entropy reduction) → ``attack`` (one attack, estimator, defence) and
``attack_names`` (the attack families ``noisydeq attack`` names) → ``attack_run`` (the
attack grid); ``task_names`` (the tasks ``load_task`` loads) stands alone. Each module
imports only modules to its left; none imports torch.
"""

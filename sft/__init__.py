"""Supervised fine-tuning (``rexomni sft``; docs/training.md).

- :mod:`.config`       the run configuration (YAML + command-line overrides)
- :mod:`.data`         mixture examples -> masked token ids and image patches -> padded batches
- :mod:`.losses`       cross-entropy, coordinate soft labels, the extra-loss hook
- :mod:`.model_setup`  loading, freezing, per-part learning rates, LoRA, meta-device plans
- :mod:`.heldout`      held-out generate / parse / score
- :mod:`.trainer`      the Trainer subclass, checkpoints and resume, ``run_sft``, ``plan``
- :mod:`.cli`          ``main(argv)`` for ``rexomni sft``
"""

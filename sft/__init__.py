"""Supervised fine-tuning (``rexomni sft``; docs/training.md).

- :mod:`.config`         ``ModelArguments`` (shared with GRPO) and ``SFTConfig`` (TrainingArguments
                         + SFT fields), read from YAML and flags by ``HfArgumentParser``
- :mod:`.data`           mixture examples -> masked token ids and image patches -> padded batches
- :mod:`.losses`         cross-entropy, coordinate soft labels, the extra-loss hook
- :mod:`.model_setup`    loading, freezing, per-part learning rates, LoRA, meta-device plans
- :mod:`.heldout`        held-out generate / parse / score
- :mod:`.trainer`        the Trainer subclass, callbacks, datasets, checkpoints, ``run_sft``, ``plan``
- :mod:`.cpu_deepspeed`  what DeepSpeed and DDP need on machines without CUDA
- :mod:`.cli`            ``main(argv)`` for ``rexomni sft``
"""

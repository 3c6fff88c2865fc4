"""Distributed training on machines without CUDA: what transformers and accelerate miss there.

Applied by :class:`rexomni.sft.config.SFTConfig` before ``TrainingArguments`` sets up its devices;
nothing changes on a machine with CUDA (NCCL is chosen by accelerate as usual).

- **No shared-memory op.** DeepSpeed's CPU all-reduce would compile its shared-memory op (a C++
  build of about 35 s on first use); it only speeds up CPU all-reduce, and gloo's collectives do.
- **A backend for launched runs.** accelerate, not told ``cpu`` and finding no accelerator,
  chooses no backend; a launched (torchrun / deepspeed) run on CPU is given ``ddp_backend: gloo``.
- **DDP for launched runs without DeepSpeed.** Given only the backend, accelerate joins the
  processes but records ``distributed_type = NO``: the Trainer then wraps nothing in DDP and every
  process trains its own copy (the weights drift apart from the first step). Told ``use_cpu``, it
  records ``MULTI_CPU`` and the Trainer wraps the model in DDP over gloo.
- **DeepSpeed's world.** ``TrainingArguments._setup_devices`` passes ``ddp_backend`` to accelerate
  in every branch except DeepSpeed's. accelerate then keeps backend None: ``deepspeed.comm`` still
  joins the processes, but accelerate records ``distributed_type = NO`` and ``num_processes = 1``,
  the Trainer fills DeepSpeed's ``train_batch_size`` for one process, DeepSpeed sees a world of
  two and its batch check fails (``4 != 4 * 1 * 2``). So accelerate's ``PartialState`` is built here
  with the backend and handed to the Trainer (``accelerator_config: use_configured_state``).
"""

from __future__ import annotations

import os

import torch


def prepare_cpu_processes(args) -> None:
    """Adjust ``args`` (TrainingArguments whose devices are not set up yet) for a machine without CUDA."""
    args.dataloader_pin_memory = args.dataloader_pin_memory and torch.cuda.is_available()  # pinning needs a GPU
    if args.deepspeed:
        disable_shm_op()
    launched = int(os.environ.get("LOCAL_RANK", "-1")) != -1
    if torch.cuda.is_available() or not launched:  # NCCL as usual, or one process with nothing to join
        return
    args.ddp_backend = args.ddp_backend or "gloo"
    if args.deepspeed:
        configure_deepspeed_state(args.ddp_backend)
        args.accelerator_config = {**(args.accelerator_config or {}), "use_configured_state": True}
    else:
        args.use_cpu = True  # accelerate's MULTI_CPU: the model is wrapped in DDP (see the module's notes)


def disable_shm_op() -> None:
    """On a machine without CUDA, let DeepSpeed use plain gloo collectives instead of compiling its
    shared-memory op."""
    if torch.cuda.is_available():
        return
    import deepspeed.ops

    compatible = dict(deepspeed.ops.__compatible_ops__) if "__compatible_ops__" in vars(deepspeed.ops) else {}
    compatible["deepspeed_shm_comm"] = False
    vars(deepspeed.ops)["__compatible_ops__"] = _AllFalse(compatible)


class _AllFalse(dict):
    """A compatibility table that answers False for every op it was not told about (no probing)."""

    def get(self, key, default=None):
        return super().get(key, False)


def configure_deepspeed_state(backend: str) -> None:
    """accelerate's process state for DeepSpeed, built with ``backend`` (see the module's notes)."""
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"  # what TrainingArguments sets around the same call
    try:
        PartialState(backend=backend)
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]

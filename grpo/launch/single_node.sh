#!/usr/bin/env bash
# GRPO on one machine with torchrun: SFT's launcher (sft/launch/single_node.sh) running the GRPO entry, one
# process per GPU (NPROC, default: all visible GPUs, else 1). With the config's vllm_mode: colocate, each
# process also runs its vLLM rollouts on its own GPU.
#
#   bash grpo/launch/single_node.sh grpo/configs/qwen2.5-vl-3b.yaml --model runs/qwen2.5-vl-3b-sft
#   NPROC=1 bash grpo/launch/single_node.sh grpo/configs/tiny.yaml --model runs/tiny
set -euo pipefail
ENTRY=rexomni.grpo.cli exec bash "$(dirname "$0")/../../sft/launch/single_node.sh" "$@"

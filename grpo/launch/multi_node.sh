#!/usr/bin/env bash
# GRPO on several machines with torchrun: SFT's launcher (sft/launch/multi_node.sh) running the GRPO entry.
# Run the same command on every training node, each with its own NODE_RANK (0 .. NNODES-1); MASTER_ADDR is
# node 0's address. For rollouts on a vLLM server of its own node, start grpo/launch/vllm_server.sh there and
# pass --vllm_mode server --vllm_server_host THAT_NODE.
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash grpo/launch/multi_node.sh grpo/configs/qwen2.5-vl-3b.yaml
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 bash grpo/launch/multi_node.sh grpo/configs/qwen2.5-vl-3b.yaml
#
# Environment: NNODES, NODE_RANK, MASTER_ADDR (required); MASTER_PORT (29500); NPROC (processes per node,
# default: visible GPUs, else 1); PYTHON (python).
set -euo pipefail
ENTRY=rexomni.grpo.cli exec bash "$(dirname "$0")/../../sft/launch/multi_node.sh" "$@"

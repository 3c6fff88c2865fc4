#!/usr/bin/env bash
# The vLLM rollout server for vllm_mode: server, on a node (or GPUs) of its own: TRL's `trl vllm-serve` on the
# starting checkpoint; the trainer pushes its weights to it after every step. Then train with
#   --use_vllm true --vllm_mode server --vllm_server_host THIS_HOST [--vllm_server_port 8000]
#
#   bash grpo/launch/vllm_server.sh runs/qwen2.5-vl-3b-sft            # all visible GPUs, tensor parallel
#   TP=2 DP=4 PORT=8000 bash grpo/launch/vllm_server.sh runs/qwen2.5-vl-3b-sft
#
# The checkpoint must hold the tokenizer as rexomni saved it (an SFT output_dir does): vLLM tokenizes nothing
# here (TRL sends token ids), but it reads the vocabulary size and the image settings from the folder.
set -euo pipefail
MODEL=${1:?usage: vllm_server.sh CHECKPOINT}
shift
PYTHON=${PYTHON:-python}
GPUS=$("$PYTHON" -c "import torch; print(max(torch.cuda.device_count(), 1))")
TP=${TP:-$GPUS}
DP=${DP:-1}
exec "$PYTHON" -m trl.scripts.vllm_serve --model "$MODEL" --tensor_parallel_size "$TP" \
    --data_parallel_size "$DP" --port "${PORT:-8000}" --host 0.0.0.0 "$@"

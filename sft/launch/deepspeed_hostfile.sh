#!/usr/bin/env bash
# SFT with the DeepSpeed launcher over the machines of a hostfile (passwordless ssh from this node
# to the others, same paths and environment on all). See sft/launch/hostfile.example.
#
#   HOSTFILE=sft/launch/hostfile bash sft/launch/deepspeed_hostfile.sh sft/configs/qwen2.5-vl-3b.yaml
#
# Environment: HOSTFILE (sft/launch/hostfile); MASTER_ADDR (first host of the hostfile);
# MASTER_PORT (29500). The config should name a DeepSpeed JSON (deepspeed: ds_zero2.json).
set -euo pipefail
CONFIG=${1:?usage: deepspeed_hostfile.sh CONFIG.yaml [--FIELD VALUE ...]}
shift
HOSTFILE=${HOSTFILE:-sft/launch/hostfile}
[[ -f "$HOSTFILE" ]] || { echo "hostfile $HOSTFILE not found (copy sft/launch/hostfile.example)" >&2; exit 2; }
MASTER_ADDR=${MASTER_ADDR:-$(grep -v '^\s*#' "$HOSTFILE" | awk 'NF {print $1; exit}')}
MASTER_PORT=${MASTER_PORT:-29500}
exec deepspeed --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    --module rexomni.sft.cli --config "$CONFIG" "$@"

#!/bin/bash
# Example Slurm job: AnimateDiff-Lightning's 64-GPU recipe on 8 nodes x 8 GPUs (paper 3.4).
# One torchrun launcher per node; torchrun's c10d rendezvous on the first node joins them.
# The checkpoint folder must be on a filesystem every node sees. Re-submitting resumes from the newest
# complete checkpoint (add --run.max_steps N to stop cleanly before the time limit).
#
#   sbatch scripts/slurm_train.sh configs/animatediff_lightning.toml [--a.b value ...]
#SBATCH --job-name=adl-distill
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=48:00:00
#SBATCH --output=slurm-%j.out
set -euo pipefail

CONFIG=${1:?usage: sbatch scripts/slurm_train.sh CONFIG.toml [--a.b value ...]}
shift
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
PORT=${PORT:-29500}

srun torchrun \
    --nnodes "$SLURM_NNODES" \
    --nproc_per_node 8 \
    --rdzv-backend c10d \
    --rdzv-endpoint "$HEAD_NODE:$PORT" \
    --rdzv-id "$SLURM_JOB_ID" \
    -m trainer train --config "$CONFIG" "$@"

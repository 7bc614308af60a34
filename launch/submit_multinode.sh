#!/usr/bin/env bash
# Check a config for NODES nodes of GPUS_PER_NODE GPUs (default 8), then submit it:
#   bash launch/submit_multinode.sh 2 configs/paper_if_math_code.py [mixjax.run args...]
# The check (python -m mixjax.run --check-launch NODESxGPUS, with the mesh override the
# sbatch script adds) needs no GPU: a global batch that does not split over the mesh, or a
# missing path, stops here with the fix (exit 2) instead of after the wait in the queue.
set -euo pipefail
nodes=${1:?usage: launch/submit_multinode.sh NODES CONFIG [mixjax.run args...]}; config=${2:?config}; shift 2
gpus=${GPUS_PER_NODE:-8}
python -m mixjax.run --config "$config" --check-launch "${nodes}x${gpus}" --set 'train.dcn_mesh_shape=(-1,1,1)' "$@"
exec sbatch --nodes="$nodes" --gpus-per-node="$gpus" launch/slurm_multinode.sbatch "$config" "$@"

#!/usr/bin/env bash
# One host, all its local accelerators (1-8 GPUs, or CPU). The mesh defaults to data
# parallel over every device; set train.mesh_shape to shard the model (e.g. (1,-1,1) FSDP).
#   bash launch/single_host.sh configs/paper_if_math_code.py [--set train.mesh_shape=(1,-1,1)]
set -euo pipefail
config=${1:?usage: launch/single_host.sh CONFIG [mixjax.run args...]}; shift
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
exec python -m mixjax.run --config "$config" "$@"

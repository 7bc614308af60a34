#!/usr/bin/env bash
# A Cloud TPU VM pod slice: the same command on every worker; jax.distributed.initialize()
# discovers the pod on its own. The experiment directory must be on storage all workers
# share (e.g. a gcsfuse mount), since checkpoints and results are written there.
#   bash launch/tpu_pod.sh my-tpu us-central2-b configs/paper_if_math_code.py --set 'train.mesh_shape=(1,-1,1)'
# Every argument reaches the workers' shell quoted (printf %q), exactly as given here.
set -euo pipefail
tpu=${1:?usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG [mixjax.run args...]}; zone=${2:?zone}; config=${3:?config}; shift 3
remote=$(printf ' %q' python -m mixjax.run --config "$config" --distributed --no-progress "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd ~/mixjax && pip install -q -e . 'jax[tpu]' &&${remote}"

#!/usr/bin/env bash
# Sourced by the SLURM scripts (from the submit directory, the repository root): the GPU
# environment of every mixjax process. Override any of it by exporting it before sbatch.
#
# XLA_PYTHON_CLIENT_MEM_FRACTION: JAX preallocates this share of each GPU (default 0.75);
# 0.9 leaves ~8 GB of an H100 to NCCL buffers and cuDNN workspaces.
# XLA_FLAGS: the GPU flags MaxText's GPU scripts set: the latency-hiding scheduler, which
# overlaps the FSDP all-gathers / reduce-scatters with compute; pipelined collectives in
# the layer loop (nn.scan), each layer's all-gather issued one iteration ahead; while-loop
# double buffering; collective combining thresholds; cuBLAS, not Triton, for GEMMs. Every
# flag is checked by tests/test_launch.py to parse in the tested jaxlib (an unknown
# flag in XLA_FLAGS aborts the process at startup).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
MIXJAX_XLA_GPU_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true --xla_gpu_enable_highest_priority_async_stream=true \
--xla_gpu_enable_pipelined_all_gather=true --xla_gpu_enable_pipelined_reduce_scatter=true --xla_gpu_enable_pipelined_all_reduce=true \
--xla_gpu_enable_while_loop_double_buffering=true --xla_gpu_enable_triton_gemm=false \
--xla_gpu_all_gather_combine_threshold_bytes=134217728 --xla_gpu_reduce_scatter_combine_threshold_bytes=67108864 \
--xla_gpu_all_reduce_combine_threshold_bytes=134217728"
export MIXJAX_XLA_GPU_FLAGS
export XLA_FLAGS="${MIXJAX_XLA_GPU_FLAGS}${XLA_FLAGS:+ $XLA_FLAGS}"

#!/usr/bin/env bash
# A starting point, not tested on a GPU yet: mixjax GPU smoke test + benchmark for ONE fresh NVIDIA H100/H200, run from the repo root:
#     bash launch/gpu_check.sh     (whole run kept under ~7.5 min by DEADLINE_S)
# The repository's copy of /work/shared/gpu_check.sh, updated for issue 27: the SLURM scripts'
# GPU environment (launch/gpu_env.sh: memory fraction, MaxText's XLA GPU flags), the default
# attention (flash on GPU where its shape rules allow), the checkpoint bytes of the SFT runs
# (best params only: no full save within the 30-min timer), a cuDNN packed-rows probe.
# Steps: install .[cuda,test] into .venv-gpu; check jax sees a GPU; GPU-run the tests that
# execute the real Triton flash kernel (tests/test_model.py, tests/test_kernels.py: no test
# is GPU-only, these are the ones a GPU changes); benchmarks/train_throughput.py for
# llama3.2-1b at seq 4096 with flash and with XLA attention (tokens/s, MFU); a 20-step SFT of
# tests/fixtures/tiny_config.py through `python -m mixjax.run` (XLA attention, then flash);
# if time is left, an attention micro-benchmark (Pallas flash vs mixjax XLA vs cuDNN).
# Assumes: python3 >= 3.11 with venv (or PYTHON=...); PyPI reachable; an NVIDIA driver new
# enough for jax 0.10.2's CUDA 12 pip wheels; ~8 GB free disk; no old CUDA on
# LD_LIBRARY_PATH shadowing the pip wheels. Results: $OUT (or ./gpu-check-out)/gpu_check.log
# and summary.txt. Dry run on a CPU box with an existing venv: SKIP_INSTALL=1 ALLOW_CPU=1
# VENV=/path/.venv SMALL=1 bash launch/gpu_check.sh
set -uo pipefail
T0=$SECONDS
DEADLINE_S=${DEADLINE_S:-450}
OUTDIR=${OUT:-gpu-check-out}; mkdir -p "$OUTDIR"
WORK=$(mktemp -d)
exec > >(tee -a "$OUTDIR/gpu_check.log") 2>&1
SUMMARY=$OUTDIR/summary.txt; : > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $((DEADLINE_S - (SECONDS - T0))); }
# run NAME MAX_S CMD...: runs CMD with a timeout of min(MAX_S, time left - 5); skips when < 20 s
# are left; CMD's output goes to $RUN_LOG when set (the log), else to stdout
run() {
  local name=$1 max=$2; shift 2
  local l; l=$(left)
  if (( l < 20 )); then note "SKIP  $name (out of time)"; return 99; fi
  local t=$(( max < l - 5 ? max : l - 5 )) s=$SECONDS rc
  echo "=== $name (timeout ${t}s, $(( SECONDS - T0 ))s elapsed)"
  if [[ -n "${RUN_LOG:-}" ]]; then timeout --kill-after=5 "$t" "$@" > "$RUN_LOG" 2>&1; rc=$?
  else timeout --kill-after=5 "$t" "$@"; rc=$?; fi
  note "$( ((rc == 0)) && echo OK || echo "FAIL(rc=$rc)")  $name  $((SECONDS - s))s"
  return $rc
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /' | tee -a "$SUMMARY"
VENV=${VENV:-.venv-gpu}
if [[ -z "${SKIP_INSTALL:-}" ]]; then
  PY=${PYTHON:-python3}
  "$PY" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' || { note "FAIL python >= 3.11 needed"; exit 2; }
  run "venv + pip install -e .[cuda,test]" 300 bash -c "'$PY' -m venv '$VENV' && '$VENV/bin/pip' install -q --progress-bar off -U pip \
    && '$VENV/bin/pip' install -q --progress-bar off -e '.[cuda,test]'" || { note "install failed"; exit 2; }
fi
[[ -x "$VENV/bin/python" ]] || { note "FAIL no $VENV/bin/python"; exit 2; }
export PATH="$(cd "$VENV/bin" && pwd):$PATH"
# shellcheck source=launch/gpu_env.sh
source launch/gpu_env.sh  # XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 and the XLA GPU flags the SLURM jobs use
export MIXJAX_CACHE_DIR=$WORK/jax-cache
python - <<'EOF' | tee -a "$SUMMARY"
import jax, jaxlib
d = jax.devices()[0]
print(f"jax {jax.__version__} jaxlib {jaxlib.__version__} backend {jax.default_backend()} device {d.device_kind!r} x{jax.device_count()}")
EOF
BACKEND=$(python -c 'import jax; print(jax.default_backend())' 2>/dev/null)
if [[ "$BACKEND" != gpu && -z "${ALLOW_CPU:-}" ]]; then note "FAIL jax backend is '$BACKEND', not gpu"; exit 3; fi

# 1. Tests that run the real Triton kernel on a GPU. Default precision first (what users get:
# XLA's float32 matmuls run as TF32 on Hopper); failures rerun at 'highest' to tell TF32
# tolerance misses from real errors.
if ! run "pytest model+kernels (default precision)" 100 python -m pytest -q -o cache_dir="$WORK/pytest" \
    -rf --tb=line tests/test_model.py tests/test_kernels.py; then
  run "pytest failed tests again at matmul precision highest" 90 \
    env JAX_DEFAULT_MATMUL_PRECISION=highest python -m pytest -q -o cache_dir="$WORK/pytest" --lf -rf --tb=short tests/test_model.py tests/test_kernels.py
fi

# 2. Training throughput, llama3.2-1b, seq 4096, bf16, one GPU (median of 2 rounds x 4 steps).
PRESET=llama3.2-1b SEQ=4096 BATCH=8; [[ -n "${SMALL:-}" ]] && PRESET=demo SEQ=128 BATCH=4
for attn in flash xla; do
  b=$BATCH
  until RUN_LOG=$WORK/bench_$attn.txt run "train_throughput $PRESET seq $SEQ batch $b attention=$attn" 170 \
      python benchmarks/train_throughput.py --preset $PRESET --seq $SEQ --batch $b --attention $attn --no-torch --steps 4 --rounds 2 --threads 2; do
    tail -4 "$WORK/bench_$attn.txt" | tee -a "$SUMMARY"
    (( b > 2 )) && grep -qi "resource_exhausted\|out of memory" "$WORK/bench_$attn.txt" || break
    b=$((b / 2)); echo "OOM: retrying with batch $b"
  done
  grep -E "^(llama|demo|qwen)|tok/s|^ +(-|[0-9])" "$WORK/bench_$attn.txt" | tee -a "$SUMMARY"
done

# 3. 20-step SFT through the pipeline CLI on the GPU (tiny synthetic config, bf16).
sft() {  # sft LABEL EXTRA_SETS...
  local label=$1; shift
  run "mixjax.run SFT 20 steps ($label)" 120 python -m mixjax.run --config tests/fixtures/tiny_config.py --run 0 --no-progress \
    --set train.max_steps=20 train.seq_len=128 model.dtype=bfloat16 "workdir=$WORK/exp-$label" "$@"
  local m; m=$(ls "$WORK"/exp-"$label"/tiny/runs/*/metrics.jsonl 2>/dev/null | head -1)
  [[ -n "$m" ]] && cp "$m" "$OUTDIR/sft_$label.metrics.jsonl" && { echo "  last step: $(tail -1 "$m")"; python -c "import json,sys; r=json.load(open(sys.argv[1])); print('  result: best_step', r['best_step'], 'final', r['final_step'], 'losses', r['best_losses'])" "${m%metrics.jsonl}result.json"; } | tee -a "$SUMMARY"
  # Checkpoints left by the runs (released once result.json is written unless keep_best_params):
  echo "  checkpoint bytes left: $(du -sb "$WORK"/exp-"$label"/tiny/runs/*/checkpoints 2>/dev/null | awk '{s += $1} END {print s + 0}')" | tee -a "$SUMMARY"
}
sft xla
sft flash model.dim=128 model.hidden_dim=256 model.attention_impl=flash  # head_dim 64: flash_shape_error's rules
sft default model.dim=128 model.hidden_dim=256  # attention_impl None: flash on GPU where the shape rules allow
sft cudnn model.dim=128 model.hidden_dim=256 model.attention_impl=cudnn  # opt-in; cudnn_shape_error's rules

# 4. If time is left: attention alone, fwd+bwd, packed rows (4 segments), GQA, bf16.
cat > "$WORK/attn_bench.py" <<'EOF'
import os, sys, time
import jax, jax.numpy as jnp, numpy as np
from mixjax.model.llama import attention
small = bool(os.environ.get("SMALL"))
shapes = [("1B", 8, 4096, 32, 8, 64), ("8B/dev", 2, 4096, 32, 8, 128)] if not small else [("tiny", 1, 256, 4, 2, 16)]
impls = {
    "flash(pallas)": lambda q, k, v, s: attention(q, k, v, s, "flash"),
    "xla(mixjax)": lambda q, k, v, s: attention(q, k, v, s, "xla"),
    "cudnn(mixjax)": lambda q, k, v, s: attention(q, k, v, s, "cudnn"),  # same-segment mask as a (B,1,T,T) bias
    "cudnn(no segs)": lambda q, k, v, s: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn"),
    "cudnn(packed)": lambda q, k, v, s: cudnn_packed(q, k, v, s),
}


def cudnn_packed(q, k, v, segments, max_segments=4):
    """Packed rows on cuDNN (jax's private fused_attention_stablehlo: q_offsets/q_seqlen per
    segment, PADDING_CAUSAL): what a mixjax cuDNN path would call. Segments are contiguous
    runs 1..k (0: padding at the end); rows here have 4."""
    from jax._src.cudnn import fused_attention_stablehlo as fa
    ids = jnp.arange(1, max_segments + 1)
    lengths = jnp.sum(segments[:, :, None] == ids, axis=1).astype(jnp.int32)  # (B, M)
    cumulative = jnp.concatenate([jnp.zeros((q.shape[0], 1), jnp.int32), jnp.cumsum(lengths, axis=1)], axis=1)  # (B, M+1)
    count = jnp.sum(lengths > 0, axis=1, keepdims=True)
    offsets = jnp.where(jnp.arange(max_segments + 1) <= count, cumulative, -1)
    lengths = jnp.where(lengths > 0, lengths, -1)
    return fa.dot_product_attention(q, k, v, q_seqlen=lengths, kv_seqlen=lengths, q_offsets=offsets, kv_offsets=offsets,
                                    scale=1.0 / q.shape[-1] ** 0.5, mask_type=fa.MaskType.PADDING_CAUSAL)
for name, b, t, n, kv, h in shapes:
    ks = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(ks[0], (b, t, n, h), jnp.bfloat16)
    k = jax.random.normal(ks[1], (b, t, kv, h), jnp.bfloat16)
    v = jax.random.normal(ks[2], (b, t, kv, h), jnp.bfloat16)
    seg = jnp.asarray(np.repeat(np.arange(1, 5), t // 4)[None].repeat(b, 0), jnp.int32)
    flops = 3 * 4 * b * n * t * t * h / 2  # causal fwd x3 (mixjax's MFU accounting)
    for label, fn in impls.items():
        f = jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(fn(q, k, v, seg).astype(jnp.float32)), argnums=(0, 1, 2)))
        try:
            jax.block_until_ready(f(q, k, v))
            times = []
            for _ in range(5):
                s = time.perf_counter(); jax.block_until_ready(f(q, k, v)); times.append(time.perf_counter() - s)
            best = min(times)
            print(f"{name:7s} {label:15s} fwd+bwd {best * 1e3:8.2f} ms  {flops / best / 1e12:7.1f} TFLOP/s", flush=True)
        except Exception as e:
            print(f"{name:7s} {label:15s} FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
EOF
RUN_LOG=$WORK/attn.txt run "attention micro-benchmark" 120 python "$WORK/attn_bench.py"
grep -E "ms|FAILED" "$WORK/attn.txt" | tee -a "$SUMMARY"

cp "$WORK"/*.txt "$OUTDIR"/ 2>/dev/null
note "total $((SECONDS - T0))s; log $OUTDIR/gpu_check.log"
echo "======== SUMMARY"; cat "$SUMMARY"

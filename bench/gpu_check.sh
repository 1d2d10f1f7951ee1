#!/usr/bin/env bash
# The checks to run where a GPU is lent (the `run` tool of the device machine, ~8 minutes):
#   make gpu-wheels   # here, once: the wheels the machine lacks (it has Python 3.12 and a CUDA torch)
#   run: bash bench/gpu_check.sh   carry: [".gpu-wheels"]   timeout_s: 590
# Then: the decoder against transformers and the step by replies together (bench.decoder_check
# --steps), one user's decode greedy and sampled (bench.speed), users at once through `localllm serve`
# (bench.many_users). Each log goes to $OUT (the device tool brings it back) and to the output.
set -u
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
python=${PYTHON:-python3}  # the machine's, with its CUDA torch (PYTHON=.venv/bin/python: a dry run here)
if [ -d .gpu-wheels ]; then
    "$python" -m pip install -q --no-deps --no-compile --target /tmp/site .gpu-wheels/*.whl 2>&1 | tail -2
    export PYTHONPATH=/tmp/site:$PWD
fi
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$python" -c "import torch; print('torch', torch.__version__, 'cuDNN', torch.backends.cudnn.version())"
} 2>&1 | tee "$out/machine.txt"
step() {  # step NAME SECONDS COMMAND...: one bench, bounded, logged
    local name=$1 seconds=$2
    shift 2
    echo "== $name"
    timeout "$seconds" "$@" 2>&1 | grep -v "Writing model shards" | tee "$out/$name.log"
}
step decoder_check 170 "$python" -m bench.decoder_check --steps
step speed 150 "$python" -m bench.speed --no-quality
step many_users 200 "$python" -m bench.many_users --users 1 3 4 --rounds 2

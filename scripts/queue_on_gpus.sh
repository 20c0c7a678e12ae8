#!/usr/bin/env bash
# The DVC experiment queue with one worker per GPU: worker i sees only its own GPU
# (CUDA_VISIBLE_DEVICES), so K queued experiments train side by side, one per GPU.
#
#   dvc exp run --queue -S 'train.optimizer.lr=0.1,0.2,0.4,0.8'
#   bash scripts/queue_on_gpus.sh            # every GPU nvidia-smi lists
#   bash scripts/queue_on_gpus.sh 0 2        # GPUs 0 and 2 only
#   dvc queue status; dvc exp show
#
# `dvc queue start -j K` starts workers 1..K with one shared environment. Started one at a
# time instead, each under its own CUDA_VISIBLE_DEVICES, every worker keeps its GPU: DVC
# starts only the workers that are not running yet. The experiments should leave
# train.device at auto or cuda (each sees its one GPU as cuda:0) and train.devices at 1.
set -euo pipefail
gpus=${*:-$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | tr '\n' ' ')}
if [ -z "$gpus" ]; then
    echo "error: no GPU listed by nvidia-smi; name them: bash scripts/queue_on_gpus.sh 0 1" >&2
    exit 1
fi

workers_running() {
    dvc queue status 2>/dev/null \
        | sed -n 's/^Worker status: \([0-9]*\) active, \([0-9]*\) idle.*/\1 \2/p' \
        | awk '{ print $1 + $2 }'
}

count=0
for gpu in $gpus; do
    count=$((count + 1))
    CUDA_VISIBLE_DEVICES=$gpu dvc queue start -j "$count" >/dev/null
    # Wait until DVC sees this worker, or the next start would start it a second time.
    waited=$SECONDS
    until [ "$(workers_running)" -ge "$count" ] 2>/dev/null; do
        if [ $((SECONDS - waited)) -gt 60 ]; then
            echo "error: queue worker $count did not start within 60 s (see dvc queue logs)" >&2
            exit 1
        fi
        sleep 0.5
    done
    echo "queue worker $count: CUDA_VISIBLE_DEVICES=$gpu"
done

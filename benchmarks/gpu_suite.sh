#!/usr/bin/env bash
# Every GPU check and figure in one command, for one device session:
# the CUDA tests, then the loop-overhead, throughput/MFU and Fashion-MNIST benchmarks.
# Each step's output goes to OUT_FOLDER/<step>.txt; a failing step does not stop the rest.
#
#   bash benchmarks/gpu_suite.sh OUT_FOLDER [FASHION_MNIST_FOLDER]
#   bash benchmarks/gpu_suite.sh --dry-run [FASHION_MNIST_FOLDER]   # print each step's command, run none
#
# FASHION_MNIST_FOLDER holds the four idx .gz files (default: Debian's
# /usr/share/datasets/fashion-mnist). Takes about 15 minutes on one H100 (estimate, not
# yet measured); docs/benchmarks.md says where each figure goes.
#
# The workplace's GPU machines have torch but not dvclive or jsonschema, and no package
# index. Fetch Python 3.12 wheels here first (about 20 MB, ignored by git):
#   P="--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
#      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
#   grep -v -e '^#' -e antlr4 benchmarks/gpu_requirements.txt | xargs python3 -m pip download --no-deps $P -d .whl
#   python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3
#   mkdir -p .fashion && cp /usr/share/datasets/fashion-mnist/*.gz .fashion/   (also in .gitignore)
# then, on the device machine, carrying .whl and .fashion:
#   bash benchmarks/gpu_suite.sh "$OUT" .fashion
# This script installs .whl/ into /tmp/site when it is there.
set -uo pipefail
dry_run=false
if [ "${1:-}" = --dry-run ]; then
    dry_run=true
    set -- "" "${@:2}"
else
    : "${1:?usage: bash benchmarks/gpu_suite.sh OUT_FOLDER [FASHION_MNIST_FOLDER]}"
fi
out=$1
fashion=${2:-/usr/share/datasets/fashion-mnist}
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
$dry_run || mkdir -p "$out"
if ! $dry_run && [ -d .whl ]; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

# Device time is scarce: tests/test_gpu_suite.py checks every step's command (--dry-run)
# against its script's options on a CPU, so a renamed option cannot waste a GPU session.
step() {
    local name=$1; shift
    if $dry_run; then
        printf '%s' "$name"; printf ' %q' "$@"; echo
        return
    fi
    echo "== $name: $*"
    local started=$SECONDS
    "$@" >"$out/$name.txt" 2>&1
    local status=$?
    echo "   exit $status after $((SECONDS - started)) s; last lines:"
    tail -n 4 "$out/$name.txt" | sed 's/^/   /'
}

step machine bash -c "nvidia-smi; $python -c 'import torch; print(torch.__version__, torch.cuda.get_device_name())'"
step cuda_tests "$python" -m pytest tests/test_cuda.py -q
step loop_overhead "$python" benchmarks/bench_loop_overhead.py --device cuda
step loop_overhead_compiled "$python" benchmarks/bench_loop_overhead.py --device cuda --compile
step throughput "$python" benchmarks/gpu_throughput.py --device cuda
# the CPU speedrun's spec and recipe (fashion_cpu) on the GPU, then the small ResNet the GPU targets were set for
step fashion "$python" benchmarks/fashion_time_to_accuracy.py --device cuda --data "$fashion" --epochs 1 2 4 8 16
step fashion_resnet "$python" benchmarks/fashion_time_to_accuracy.py --device cuda --data "$fashion" \
    --spec specs/fashion_resnet.yaml --recipe airbench --batch 512 --lr 0.1 --budgets 15 60 180 --targets 0.94 0.95 0.955 \
    --epochs 1 2 4 8 16 32 64
# data-parallel scaling of resnet18_cifar over every GPU the machine has (1 GPU: one row)
step data_parallel "$python" benchmarks/bench_data_parallel.py --device cuda --rounds 2
step versus_peers "$python" -m benchmarks.versus_peers --device cuda --data "$fashion" \
    --models simcnn ironhack_cnn resnet18_cifar --train-images 0 --test-images 10000 --epochs 5 --repeats 3 \
    --workers 8 --target 0.90
# the same network with each framework's own recipe (cnnspec: the CPU speedrun's, fp32 on CUDA as it says)
step versus_peers_own "$python" -m benchmarks.versus_peers --device cuda --data "$fashion" --recipes own \
    --models fashion_cpu --train-images 0 --test-images 10000 --epochs 5 --repeats 3 --workers 8 --target 0.90
# the whole pipeline (dvc repro, training on the GPU) against its train stage's training time
step dvc_repro "$python" -m benchmarks.versus_peers --device cuda --data "$fashion" --frameworks cnnspec \
    --models simcnn --train-images 0 --test-images 10000 --epochs 4 --repeats 1 --target 0.88 --dvc-repro
step predict "$python" benchmarks/predict_throughput.py --device cuda --data "$fashion" --images 10000 --batch-size 256
# per-stage pipeline times and a no-op dvc repro (evaluate runs on the GPU)
step pipeline_stages "$python" benchmarks/bench_pipeline_stages.py --data "$fashion"
# cnnspec predict's forward pass against onnxruntime on the machine's CPU cores (needs the onnx wheels in .whl)
step predict_vs_onnxruntime "$python" benchmarks/predict_vs_onnxruntime.py --data "$fashion" --batch-size 256

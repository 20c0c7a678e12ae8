#!/usr/bin/env bash
# Every GPU check and figure in one command, for one device session: the CUDA tests, then
# the benchmarks, most wanted first. A failing step does not stop the rest; a step that
# outlasts its share of the time budget is stopped and the next one starts.
#
#   bash benchmarks/gpu_suite.sh [--budget SECONDS] [--only STEP,STEP] OUT_FOLDER [FASHION_MNIST_FOLDER]
#   bash benchmarks/gpu_suite.sh --dry-run [FASHION_MNIST_FOLDER]   # print each step's command, run none
#
# --budget (default 540 s) fits one device call of at most 10 minutes, the machine's start
# and the wheels' install aside; each step gets at most its own cap and what is left of the
# budget, and steps that no longer fit (under 20 s left, GPU_SUITE_MIN_STEP) are listed as skipped. --only runs the named steps
# (a later session measures what an earlier one had no time for). Every step's output goes
# to OUT_FOLDER/steps.log (a device call returns at most 8 files), one line per step to
# OUT_FOLDER/summary.txt and the terminal. FASHION_MNIST_FOLDER holds the four idx .gz files
# (default: Debian's /usr/share/datasets/fashion-mnist). Not yet run on a GPU;
# docs/benchmarks.md says where each figure goes.
#
# The workplace's GPU machines have torch but not dvclive or jsonschema, and no package
# index. Fetch Python 3.12 wheels here first (about 23 MB, ignored by git):
#   P="--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
#      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
#   grep -v -e '^#' -e antlr4 benchmarks/gpu_requirements.txt | xargs python3 -m pip download --no-deps $P -d .whl
#   python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3
#   mkdir -p .fashion && cp /usr/share/datasets/fashion-mnist/*.gz .fashion/   (also in .gitignore)
# then, on the device machine, carrying .whl and .fashion:
#   bash benchmarks/gpu_suite.sh "$OUT" .fashion
# This script installs .whl/ into /tmp/site when it is there.
set -uo pipefail
usage="usage: bash benchmarks/gpu_suite.sh [--budget SECONDS] [--only STEP,STEP] OUT_FOLDER [FASHION_MNIST_FOLDER]"
dry_run=false
budget=540
only=""
while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) dry_run=true; shift ;;
        --budget) budget=${2:?$usage}; shift 2 ;;
        --only) only=",${2:?$usage},"; shift 2 ;;
        -*) echo "error: unknown option $1; $usage" >&2; exit 2 ;;
        *) break ;;
    esac
done
if ! [[ $budget =~ ^[0-9]+$ ]]; then
    echo "error: --budget takes whole seconds, not '$budget'" >&2; exit 2
fi
if $dry_run; then
    out=""
    fashion=${1:-/usr/share/datasets/fashion-mnist}
else
    out=${1:?$usage}
    fashion=${2:-/usr/share/datasets/fashion-mnist}
fi
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
# the folders as given from where the suite was started, before it moves to the repository
fashion=$(realpath -m "$fashion")
$dry_run || out=$(realpath -m "$out")
cd "$(dirname "$0")/.."
if ! $dry_run; then
    mkdir -p "$out" && : >"$out/steps.log" && : >"$out/summary.txt" || exit 1
    if [ -d .whl ]; then
        "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    # dvc.yaml's stages run `python stages/...`: the machine may have only python3, or
    # another python first on PATH; make `python` this interpreter.
    shims=$(mktemp -d) && ln -s "$(command -v "$python")" "$shims/python" && export PATH="$shims:$PATH"
fi
deadline=$budget  # SECONDS counts from the script's start: the wheels' install is inside the budget

report() {
    echo "$1" | tee -a "$out/summary.txt"
}

# step NAME CAP_SECONDS COMMAND...
# Device time is scarce: tests/test_gpu_suite.py checks every step's command (--dry-run)
# against its script's options on a CPU, so a renamed option cannot waste a GPU session.
step() {
    local name=$1 cap=$2; shift 2
    if [ -n "$only" ] && [[ $only != *",$name,"* ]]; then
        return
    fi
    if $dry_run; then
        printf '%s %s' "$name" "$cap"; printf ' %q' "$@"; echo
        return
    fi
    local left=$((deadline - SECONDS))
    if [ "$left" -lt "${GPU_SUITE_MIN_STEP:-20}" ]; then
        report "$name: skipped, ${left} s of the budget left"
        return
    fi
    local limit=$((cap < left ? cap : left))
    echo "== $name (at most $limit s): $*" >>"$out/steps.log"
    local started=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >>"$out/steps.log" 2>&1
    local status=$?
    local took=$((SECONDS - started))
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        report "$name: stopped at its $limit s limit"
    else
        report "$name: exit $status after $took s"
    fi
    echo "== $name: exit $status after $took s" >>"$out/steps.log"
}

# git too: the pipeline steps make git repositories (dvc_repro, pipeline_stages)
step machine 30 bash -c "nvidia-smi; git --version; $python -c 'import torch; print(torch.__version__, torch.cuda.get_device_name())'"
step cuda_tests 150 "$python" -m pytest tests/test_cuda.py -q
step loop_overhead 60 "$python" benchmarks/bench_loop_overhead.py --device cuda
# eager rows, one epoch each (the compiled loop has its own step below), then the 10-epoch speedrun
step throughput 60 "$python" benchmarks/gpu_throughput.py --device cuda --compile off --epochs 1
# the CPU speedrun's spec and recipe (fashion_cpu) on the GPU
step fashion 90 "$python" benchmarks/fashion_time_to_accuracy.py --device cuda --data "$fashion" --epochs 1 2 4 8 16
step predict 45 "$python" benchmarks/predict_throughput.py --device cuda --data "$fashion" --images 10000 --batch-size 256
# the whole pipeline (dvc repro, training on the GPU) against its train stage's training time
step dvc_repro 120 "$python" -m benchmarks.versus_peers --device cuda --data "$fashion" --frameworks cnnspec \
    --models simcnn --train-images 0 --test-images 10000 --epochs 4 --repeats 1 --target 0.88 --dvc-repro
# per-stage pipeline times and a no-op dvc repro (evaluate runs on the GPU)
step pipeline_stages 60 "$python" benchmarks/bench_pipeline_stages.py --data "$fashion"
step loop_overhead_compiled 120 "$python" benchmarks/bench_loop_overhead.py --device cuda --compile
# the small ResNet the GPU targets were set for
step fashion_resnet 240 "$python" benchmarks/fashion_time_to_accuracy.py --device cuda --data "$fashion" \
    --spec specs/fashion_resnet.yaml --recipe airbench --batch 512 --lr 0.1 --budgets 15 60 180 --targets 0.94 0.95 0.955 \
    --epochs 1 2 4 8 16 32 64
# the same network with each framework's own recipe (cnnspec: the CPU speedrun's, fp32 on CUDA as it says)
step versus_peers_own 240 "$python" -m benchmarks.versus_peers --device cuda --data "$fashion" --recipes own \
    --models fashion_cpu --train-images 0 --test-images 10000 --epochs 5 --repeats 3 --workers 8 --target 0.90
step versus_peers 300 "$python" -m benchmarks.versus_peers --device cuda --data "$fashion" \
    --models simcnn ironhack_cnn resnet18_cifar --train-images 0 --test-images 10000 --epochs 5 --repeats 3 \
    --workers 8 --target 0.90
# data-parallel scaling of resnet18_cifar over every GPU the machine has (1 GPU: one row)
step data_parallel 120 "$python" benchmarks/bench_data_parallel.py --device cuda --rounds 2
# cnnspec predict's forward pass against onnxruntime on the machine's CPU cores (the image has onnxruntime)
step predict_vs_onnxruntime 90 "$python" benchmarks/predict_vs_onnxruntime.py --data "$fashion" --batch-size 256
exit 0

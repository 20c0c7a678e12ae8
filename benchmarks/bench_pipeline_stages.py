"""Where `dvc repro` spends its time outside training: each stage of the pipeline
timed on real Fashion-MNIST in a scratch copy of this repository, and a no-op
`dvc repro` afterwards.

    python benchmarks/bench_pipeline_stages.py                       # simcnn, untrained weights
    python benchmarks/bench_pipeline_stages.py --epochs 1            # the train stage too

Each stage runs as `dvc repro` runs it (`python stages/NAME.py`, a fresh process, its
imports included). Without --epochs the train stage is replaced by a checkpoint of
untrained weights (what evaluate and plot cost does not depend on the weights), so the
other stages can be timed in a minute. Then `dvc commit -f` records the outputs and a
no-op `dvc repro` is timed (DVC hashes the dependencies and finds nothing to run),
beside DVC's own floor: the no-op of a new repository with one trivial stage.
Prints one line per stage with its wall seconds and the load average; asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.versus_peers.pipeline import copy_working_tree  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")
STAGES = ("download", "preprocess", "resolve", "train", "evaluate", "plot")


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def timed(command: list[str], cwd: Path, env: dict) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return seconds, done.stdout + done.stderr


def untrained_checkpoint(repo: Path, env: dict) -> None:
    """models/model.pt as the train stage writes it, from the spec's untrained weights,
    and a one-epoch DVCLive log in metrics/train (what plot reads)."""
    script = (
        "import torch\n"
        "from cnnspec import build_model, load_spec\n"
        "from cnnspec.data.datasets import load_prepared\n"
        "from cnnspec.models.checkpoint import save_checkpoint\n"
        "from cnnspec.pipeline.params import load_params\n"
        "params = load_params('params.yaml', sections=['model', 'train'])\n"
        "meta = load_prepared('data/prepared')['meta']\n"
        "spec = load_spec(params['model']['spec'])\n"
        "torch.manual_seed(0)\n"
        "model = build_model(spec, tuple(meta['input_shape']), len(meta['classes'])).eval()\n"
        "save_checkpoint('models/model.pt', model, spec, meta, params, epoch=0, best_epoch=0)\n"
        "from dvclive import Live\n"
        "live = Live('metrics/train', dvcyaml=False, save_dvc_exp=False, report=None)\n"
        "for key in ('train/loss', 'train/accuracy', 'val/loss', 'val/accuracy', 'lr'):\n"
        "    live.log_metric(key, 0.5)\n"
        "live.next_step()\n"
        "live.end()\n")
    subprocess.run([sys.executable, "-c", script], cwd=repo, env=env, check=True)


def one_stage_noop(repo: Path, env: dict) -> float:
    """The fastest of three no-op `dvc repro` runs in a new repository whose one stage
    writes a line: what DVC itself costs on this machine, whatever the pipeline."""
    (repo / "dvc.yaml").write_text("stages:\n  echo:\n    cmd: echo done > out.txt\n    outs: [out.txt]\n")
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                    [sys.executable, "-m", "dvc", "repro", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=bench", "-c", "user.email=bench@cnnspec.invalid", "commit", "-qm", "one"]):
        timed(command, repo, env)
    return min(timed([sys.executable, "-m", "dvc", "repro"], repo, env)[0] for _ in range(3))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=FASHION, help="folder of the four idx .gz files")
    parser.add_argument("--spec", default="specs/simcnn.yaml")
    parser.add_argument("--epochs", type=int, help="run the train stage for this many epochs")
    parser.add_argument("--tta", help="evaluate.tta (default: the recipe's)")
    parser.add_argument("--keep", type=Path, help="work in this new folder and leave it there (to profile a stage)")
    args = parser.parse_args(argv)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               DVC_NO_ANALYTICS="1")
    figures = {}
    with tempfile.TemporaryDirectory() as scratch:
        repo = Path(scratch)
        if args.keep:
            repo = args.keep
            repo.mkdir(parents=True)
        copy_working_tree(repo)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["data"].update({"dataset": "fashion-mnist", "url": args.data.resolve().as_uri() + "/", "md5": "skip"})
        params["model"]["spec"] = args.spec
        params["train"].update({"device": "cpu", "epochs": args.epochs})
        if args.tta:
            params["evaluate"]["tta"] = args.tta
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        for stage in STAGES:
            load = load_average()
            if stage == "train" and not args.epochs:
                started = time.perf_counter()
                untrained_checkpoint(repo, env)
                seconds, stage = time.perf_counter() - started, "train (untrained checkpoint written instead)"
            else:
                seconds, _ = timed([sys.executable, f"stages/{stage.split()[0]}.py"], repo, env)
            figures[stage] = seconds
            print(f"{stage}: {seconds:.2f} s (load {load})", flush=True)
        timed([sys.executable, "-m", "dvc", "commit", "-f", "--with-deps", "plot"], repo, env)
        for attempt in (1, 2):
            load = load_average()
            seconds, output = timed([sys.executable, "-m", "dvc", "repro"], repo, env)
            figures[f"no-op dvc repro {attempt}"] = seconds
            print(f"no-op dvc repro ({attempt}): {seconds:.2f} s (load {load}): "
                  f"{output.strip().splitlines()[-1] if output.strip() else ''}", flush=True)
    with tempfile.TemporaryDirectory() as other:
        floor = one_stage_noop(Path(other), env)
    figures["no-op dvc repro, one trivial stage"] = floor
    print(f"no-op dvc repro of a repository with one trivial stage: {floor:.2f} s "
          f"(DVC's own floor on this machine)", flush=True)
    outside = sum(s for name, s in figures.items() if not name.startswith(("train", "no-op")))
    print(f"stages other than train: {outside:.1f} s in all")
    return figures


if __name__ == "__main__":
    main()

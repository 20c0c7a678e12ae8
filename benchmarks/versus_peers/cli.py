"""The command line, `python -m benchmarks.versus_peers --help` (the package's
docstring says what is measured and how)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from benchmarks.versus_peers.data import (
    DEBIAN_FOLDER,
    FRAMEWORKS,
    MODELS,
    Task,
    fashion_task_data,
    whole_batches,
)
from benchmarks.versus_peers.keras_fit import import_keras
from benchmarks.versus_peers.measure import RUNNERS, interleaved
from benchmarks.versus_peers.own_recipes import (
    RECIPE_MODES,
    check_torch_expressible,
    cnnspec_recipe,
    recipe_lines,
    resolve_own_recipe,
)
from benchmarks.versus_peers.pipeline import PIPELINE_GOAL, dvc_repro
from benchmarks.versus_peers.report import markdown_table, recipe_table, reprint, summarize
from benchmarks.versus_peers.same_network import check_same_start, parameter_counts
from cnnspec.errors import exit_on_user_error
from cnnspec.training.device import pick_device, reuse_freed_memory


def threads_named(count: int) -> str:
    return f"{count} torch thread{'s' * (count != 1)}"


def settings(args) -> dict:
    own = args.recipes == "own"  # the spec written with its own recipe in mind
    if args.quick:
        return {"train_images": 512, "test_images": 256, "epochs": 1, "repeats": 1,
                "models": ["fashion_cpu" if own else "simcnn"], "target": 0.5}
    return {"train_images": 6_400, "test_images": 2_000, "epochs": 3, "repeats": 3,
            "models": ["fashion_cpu"] if own else ["simcnn", "ironhack_cnn"], "target": 0.80}


def own_recipe_tasks(data: dict, models: list[str], frameworks: list[str], epochs: int, **shared) -> list[Task]:
    """--recipes own: per model, the spec's recipe resolved for the training images given
    (its batch fitted to them, as the resolve stage fits it), the images then cut to whole
    batches of it (Keras, at --batch, may end an epoch on a partial batch: the same images)."""
    tasks = []
    for model in models:
        resolved = resolve_own_recipe(model, len(data["train_labels"]))
        recipe = cnnspec_recipe(resolved, epochs, shared["seed"])
        if {"lightning", "plain"} & set(frameworks):
            check_torch_expressible(recipe, model)
        tasks.append(Task(model=model, **whole_batches(data, recipe["batch_size"]), epochs=epochs, **shared,
                          recipe=recipe, recipe_name=resolved["recipe"]))
    return tasks


def profile(task: Task, frameworks: list[str], rows: int = 12) -> dict:
    """Where one epoch's time goes, per framework (the main process only: DataLoader
    workers are not seen). A warm-up epoch runs first, unprofiled."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    task, tables = replace(task, epochs=1), {}
    for framework in frameworks:
        RUNNERS[framework](task)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if task.device.type == "cuda" else [])
        with profiler(activities=activities) as recorded:
            started = time.perf_counter()
            RUNNERS[framework](task)
            seconds = time.perf_counter() - started
        tables[framework] = recorded.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
        print(f"\n{framework}, {task.model}, one epoch of {len(task.train_labels):,} images: {seconds:.2f} s "
              f"(profiled)\n{tables[framework]}")
    return tables


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.versus_peers", description="cnnspec against Keras, PyTorch Lightning and a plain PyTorch script")
    parser.add_argument("--quick", action="store_true", help="512 training / 256 test images, 1 epoch, simcnn")
    parser.add_argument("--device", default="cpu", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--data", type=Path, default=DEBIAN_FOLDER, help="folder of the four idx .gz files")
    parser.add_argument("--models", nargs="+", choices=MODELS)
    parser.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS))
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--train-images", type=int, help="the first N training images (0: all 60,000)")
    parser.add_argument("--test-images", type=int, help="the first N test images (default: all 10,000)")
    parser.add_argument("--recipes", choices=RECIPE_MODES, default="shared",
                        help="shared: one recipe in all four (Adam --lr, --batch, --hflip); own: each framework's "
                             "own idiomatic recipe for the network (cnnspec: the spec's recipe, channels-last; "
                             "Lightning and plain: what they express of it; Keras: Adam defaults with the seeds' "
                             "callbacks at --batch)")
    parser.add_argument("--batch", type=int, default=64, help="seed 000's batch size (--recipes own: Keras' only)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (Keras' default; "
                        "not used with --recipes own)")
    parser.add_argument("--hflip", action="store_true", help="random horizontal flips, in every framework "
                        "(not used with --recipes own)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (lightning, plain)")
    parser.add_argument("--target", type=float, help="the test accuracy whose time is reported")
    parser.add_argument("--accuracy-tolerance", type=float, default=0.01)
    parser.add_argument("--threads", type=int, help="torch threads of the process (default: torch's own); "
                        "1 keeps a shared machine from stalling every step at OpenMP barriers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the rows and every run to this file")
    parser.add_argument("--from-json", type=Path, help="print the table of an earlier run's --json file "
                        "(with --target, --accuracy-tolerance) instead of training")
    parser.add_argument("--profile", nargs="+", choices=FRAMEWORKS,
                        help="instead of the benchmark: one epoch of the first model per framework under "
                             "torch.profiler, the operators that took the most time")
    parser.add_argument("--dvc-repro", action="store_true",
                        help="also time the whole pipeline (dvc repro) for each model on the same images, "
                        "against the train stage's own training time")
    args = parser.parse_args(argv)
    if args.from_json:
        return reprint(args.from_json, args.target, args.accuracy_tolerance)
    chosen = settings(args)
    chosen.update({key: value for key in chosen if (value := getattr(args, key)) is not None})
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cpu":  # as cnnspec's training does, for every framework from the first run on
        reuse_freed_memory()
    frameworks = list(dict.fromkeys(["cnnspec", *args.frameworks]))
    own = args.recipes == "own"
    data = fashion_task_data(args.data, chosen["train_images"], chosen["test_images"], 1 if own else args.batch)
    shared = {"batch": args.batch, "lr": args.lr, "hflip": args.hflip and not own, "seed": args.seed,
              "device": device, "workers": args.workers}
    if own:
        tasks = own_recipe_tasks(data, chosen["models"], frameworks, chosen["epochs"], **shared)
    else:
        tasks = [Task(model=model, **data, epochs=chosen["epochs"], **shared) for model in chosen["models"]]
    lines = {task.model: recipe_lines(task) for task in tasks}
    if "keras" in frameworks:
        import_keras(device)
    if "lightning" in frameworks:
        import pytorch_lightning  # noqa: F401  (imported before the first timed run)
    if args.profile:
        return profile(tasks[0], args.profile)
    counts = {task.model: parameter_counts(task) for task in tasks}
    for task in tasks:
        print(f"{task.model}: cnnspec, torch (lightning, plain) and keras start from the same weights: "
              f"outputs on 32 test images within {check_same_start(task):.1e}", flush=True)
    runs = interleaved(tasks, frameworks, chosen["repeats"])
    rows = summarize(runs, counts, chosen["target"], args.accuracy_tolerance)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU, {threads_named(torch.get_num_threads())}, {os.cpu_count()} cores")
    if own:
        trained = " / ".join(dict.fromkeys(f"{len(task.train_labels):,}" for task in tasks))
        print(f"\nFashion-MNIST, {trained} training / {len(data['test_labels']):,} test images, "
              f"{chosen['epochs']} epochs (Keras: at most, EarlyStopping), each framework's own recipe, "
              f"{chosen['repeats']} interleaved repeats, {where}")
        for task in tasks:
            print(f"{task.model}, recipes: own")
            print("\n".join(recipe_table({name: lines[task.model][name] for name in frameworks})))
        print()
    else:
        print(f"\nFashion-MNIST, {len(data['train_labels']):,} training / {len(data['test_labels']):,} test images, "
              f"{chosen['epochs']} epochs, batch {args.batch}, Adam lr {args.lr:g}, "
              f"{'hflip' if args.hflip else 'no augmentation'}, {chosen['repeats']} interleaved repeats, {where}")
    print("\n".join(markdown_table(rows, chosen["target"], chosen["repeats"])))
    for model in counts:
        print(f"{model}: parameter counts equal in all four: {counts[model]['cnnspec'][0]:,} trainable + "
              f"{counts[model]['cnnspec'][1]:,} non-trainable")
    for note in dict.fromkeys(f"{row.model}: {note}" for row in rows for note in row.notes):
        print(f"FLAG {note}")
    for row in rows:
        if any(epochs < chosen["epochs"] for epochs in row.epochs_trained):
            print(f"{row.model}: {row.framework} stopped early (EarlyStopping, best weights restored): "
                  f"{', '.join(map(str, row.epochs_trained))} of {chosen['epochs']} epochs in the repeats")
    pipelines = []
    if args.dvc_repro:
        for task in tasks:
            figure = dvc_repro(task.model, task)
            in_process = statistics.median(run.epoch_ends[-1] for run in runs
                                           if run.model == task.model and run.framework == "cnnspec")
            figure["cnnspec_fit_seconds"] = in_process
            pipelines.append(figure)
            trained = "?" if figure["train_seconds"] is None else f"{figure['train_seconds']:.1f} s"
            print(f"{task.model}: dvc repro end to end (download {figure['train_images']:,} training / "
                  f"{figure['test_images']:,} test images from a local folder, preprocess, train "
                  f"{figure['epochs']} epochs, evaluate, plot; {threads_named(figure['threads'])}): "
                  f"{figure['seconds']:.1f} s; of it the train "
                  f"stage's training {trained} (without per-epoch validation; in this process cnnspec's "
                  f"fit with a test evaluation each epoch took {in_process:.1f} s); test accuracy "
                  f"{figure['test_accuracy']}")
            if figure["added_share"] is not None:
                verdict = "met" if figure["goal_met"] else "not met"
                print(f"{task.model}: the pipeline adds {figure['seconds'] - figure['train_seconds']:.1f} s, "
                      f"{figure['added_share']:.1%} of the training; goal within {PIPELINE_GOAL:.0%}: {verdict}")
            print(f"{task.model}: each stage from DVC's 'Running stage' line to the next (the last to the "
                  f"end, DVC's own work between stages included): "
                  + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in figure["stages"].items()))
    if args.json:
        args.json.write_text(json.dumps({"rows": [asdict(row) for row in rows], "runs": [asdict(run) for run in runs],
                                         "dvc_repro": pipelines,
                                         "settings": {**chosen, "batch": args.batch, "lr": args.lr,
                                                      "hflip": args.hflip, "device": str(device),
                                                      "workers": args.workers, "recipes": args.recipes,
                                                      "recipe_lines": lines,
                                                      "cnnspec_recipes": {task.model: task.recipe for task in tasks
                                                                          if task.recipe is not None}}},
                                        indent=1))
    return rows


"""Stage 4 of 6, train: build the spec's model for the prepared data, train it, and write
models/model.pt (one self-contained checkpoint) and metrics/train/ (DVCLive).

    python stages/train.py        (reads params.resolved.yaml: model, train; and data/prepared/)

Its params come from params.resolved.yaml, which the resolve stage writes; run alone
after an edit of params.yaml or its recipe, it resolves them itself and says so.

A run killed or interrupted part-way leaves models/resume/state.pt (not a DVC
output, so `dvc repro` keeps it); the next run with the same params, spec and data
continues from it. It is removed once models/model.pt is written.

With `train.devices` above 1 it starts that many processes through torchrun
(torch.distributed.run), each training a share of every batch (DistributedDataParallel);
run under a torchrun of your own, it joins as one of its ranks (docs/scaling.md).
Only rank 0 writes.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python stages/<name>.py`: import this checkout's cnnspec
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnnspec.errors import ParamsError, die_with_parent, end_finished_script, exit_on_user_error
from cnnspec.paths import MODEL, PARAMS, PREPARED, RESUME_STATE, TRAIN_LOG
from cnnspec.pipeline.resolved import load_resolved_params
from cnnspec.training import distributed

# The two times of the last line, as the benchmarks that time this stage read them back.
FIRST_STEP_AND_REST = re.compile(r"first step ([\d.]+)s(?: \(includes compile\))?, rest ([\d.]+)s")


def run(params_path=PARAMS, prepared=PREPARED, model_path=MODEL, resume_path=RESUME_STATE,
        log_dir=TRAIN_LOG):
    # The ranks torchrun starts say nothing about a stale params.resolved.yaml: the
    # launching train stage said it once, and every rank would repeat it.
    one_process = distributed.torchrun_environment() is None
    params = load_resolved_params(params_path, sections=["recipe", "model", "train"],
                                  say=print if one_process else lambda line: None, prepared=prepared)
    # The spec, the data and the model come only after the params passed (a typo fails before them).
    import torch

    from cnnspec import build_model, load_spec
    from cnnspec.data.datasets import load_prepared
    from cnnspec.models.checkpoint import save_checkpoint
    from cnnspec.training import learning_check as runcheck
    from cnnspec.training.finetune import check_init_from, init_from, load_weights
    from cnnspec.training.loop import run_fingerprint, train

    spec = load_spec(params["model"]["spec"])  # a bad spec is reported before the data is read
    options = params["train"]
    start_from = check_init_from(options)
    if one_process:
        processes = distributed.process_count(options)
        if processes > 1:  # this process launches the ranks and waits for them
            distributed.check_request(options, processes)
            print(f"launching {processes} processes (torch.distributed.run)", flush=True)
            distributed.launch(processes, str(Path(__file__).resolve()),
                               path_arguments(params_path, prepared, model_path, resume_path, log_dir))
            return None
    data = load_prepared(prepared, mmap_mode="c")  # memory-mapped: copied to the device or streamed
    meta = data["meta"]
    with distributed.joined(options) as world:  # one process: a world of size one
        device = world.device
        torch.manual_seed(options["seed"])  # the initial weights, the same on every rank
        model = build_model(spec, tuple(meta["input_shape"]), len(meta["classes"]))
        for warning in model.spec_warnings:  # e.g. an automatic projection shortcut; docs/spec.md
            print(f"warning: {warning}", file=sys.stderr)  # (rank 0 only: the others are silent)
        if params["model"]["weights"]:
            try:
                load_weights(model, params["model"]["weights"], key="model.weights")
            except ParamsError as error:  # the key is params.yaml's
                raise ParamsError(f"params.yaml: {error}") from None
        if start_from is not None:
            init_from(model, start_from, classes=meta["classes"])
        # the device type too: a state saved on the CPU holds a CPU generator, not a GPU's
        fingerprint = run_fingerprint({**distributed.fingerprint_params(params), "on": device.type}, spec.text,
                                      meta, starting_files(params))
        result = train(model, data, options, device, resume_path=resume_path, log_dir=log_dir,
                       fingerprint=fingerprint, world=world)
        if not world.is_writer:
            return result
        save_checkpoint(model_path, result.model, spec, meta, params,
                        epoch=len(result.history) - 1, best_epoch=result.best_epoch)
        Path(resume_path).unlink(missing_ok=True)
    counts = meta.get("counts") or {}
    measured_on = counts.get("val") or counts.get("train")  # what history_verdict's accuracy counts
    learned, reason = runcheck.history_verdict(result.history, len(meta["classes"]), measured_on)
    if log_dir is not None:
        runcheck.record(Path(log_dir) / "metrics.json", learned)
    if not learned:
        runcheck.warn(reason, params)
    last = result.history[-1]
    split = "val" if "val/accuracy" in last else "train"  # data.val_split: 0 has no val metrics
    epochs = f"{len(result.history)} epoch{'' if len(result.history) == 1 else 's'}"
    compiled = " (includes compile)" if options["compile"] else ""
    kept = result.history[result.best_epoch]
    print(f"trained {epochs} on {world}: {split} accuracy {kept[split + '/accuracy']:.4f}"
          f"{best_epoch_note(result, split)}{early_stop_note(result, options)}; "
          f"first step {result.first_step_seconds:.2f}s{compiled}, rest {result.train_seconds:.2f}s; "
          f"wrote {model_path}")
    return result


def early_stop_note(result, options: dict) -> str:
    """'; stopped early: val_loss not better for 3 epochs', or ''."""
    if not result.stopped_early:
        return ""
    stopping = options["early_stopping"]
    epochs = max(1, stopping["patience"])  # patience 0 stops at the first epoch not better
    return f"; stopped early: {stopping['monitor']} not better for {epochs} epoch{'' if epochs == 1 else 's'}"


def best_epoch_note(result, split: str) -> str:
    """Which epoch's weights the checkpoint holds when they are not the last epoch's
    (early stopping's restore_best): the accuracy printed is theirs."""
    last = len(result.history) - 1
    if result.best_epoch == last:
        return ""
    final = result.history[last][split + "/accuracy"]
    return (f" (epoch {result.best_epoch + 1}'s weights, kept by restore_best, "
            f"not epoch {last + 1}'s: {final:.4f})")


def starting_files(params: dict) -> list[str]:
    """The files the weights start from (train.init_from, a model.weights file): their
    contents are part of the resume fingerprint, so a base checkpoint replaced under the
    same name starts the run over instead of resuming the old one."""
    named = [params["train"]["init_from"], params["model"]["weights"]]
    return [path for path in named if path and Path(path).is_file()]


def path_arguments(params_path, prepared, model_path, resume_path, log_dir) -> list[str]:
    """run()'s paths as command-line options, for the ranks a launch starts."""
    return ["--params", str(params_path), "--prepared", str(prepared), "--model", str(model_path),
            "--resume", str(resume_path), "--log-dir", str(log_dir)]


def parse_arguments(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="the train stage (dvc.yaml runs it without options)")
    parser.add_argument("--params", dest="params_path", default=PARAMS)
    parser.add_argument("--prepared", default=PREPARED, type=Path)
    parser.add_argument("--model", dest="model_path", default=MODEL, type=Path)
    parser.add_argument("--resume", dest="resume_path", default=RESUME_STATE, type=Path)
    parser.add_argument("--log-dir", default=TRAIN_LOG, type=Path)
    parser.add_argument("--debug", action="store_true", help="show tracebacks (also CNNSPEC_DEBUG=1)")
    arguments = vars(parser.parse_args(argv))
    arguments.pop("debug")
    return arguments


@exit_on_user_error
def main(argv=None) -> None:
    die_with_parent()  # a killed dvc must not leave this training on as an orphan
    arguments = parse_arguments(argv)
    if distributed.torchrun_environment() is None:
        run(**arguments)
    else:  # one rank of several: how it ends is told once, by the launcher
        distributed.exit_as_rank(lambda: run(**arguments))


if __name__ == "__main__":
    main()
    end_finished_script()

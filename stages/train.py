"""Stage 3 of 5, train: build the spec's model for the prepared data, train it, and write
models/model.pt (one self-contained checkpoint) and metrics/train/ (DVCLive).

    python stages/train.py        (reads params.yaml: model, train; and data/prepared/)

A run killed or interrupted part-way leaves models/resume/state.pt (not a DVC
output, so `dvc repro` keeps it); the next run with the same params, spec and data
continues from it. It is removed once models/model.pt is written.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python stages/<name>.py`: import this checkout's cnnspec
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnnspec.errors import exit_on_user_error
from cnnspec.params import check_named_paths, load_params
from cnnspec.pipeline import MODEL, PARAMS, PREPARED, RESUME_STATE, TRAIN_LOG


def run(params_path=PARAMS, prepared=PREPARED, model_path=MODEL, resume_path=RESUME_STATE,
        log_dir=TRAIN_LOG):
    params = load_params(params_path, sections=["model", "train"])
    check_named_paths(params, params_path)
    # torch loads only after params.yaml passed, so a typo fails in a blink.
    import torch

    from cnnspec import build_model, load_spec
    from cnnspec.checkpoint import save_checkpoint
    from cnnspec.datasets import load_prepared
    from cnnspec.finetune import check_init_from, init_from
    from cnnspec.training import pick_device, run_fingerprint, train

    spec = load_spec(params["model"]["spec"])  # a bad spec is reported before the data is read
    options = params["train"]
    start_from = check_init_from(options)
    data = load_prepared(prepared, mmap_mode="c")  # memory-mapped: copied to the device or streamed
    meta = data["meta"]
    device = pick_device(options["device"])
    torch.manual_seed(options["seed"])  # the initial weights
    model = build_model(spec, tuple(meta["input_shape"]), len(meta["classes"]))
    for warning in model.spec_warnings:  # e.g. an automatic projection shortcut; docs/spec.md
        print(f"warning: {warning}", file=sys.stderr)
    if start_from is not None:
        init_from(model, start_from)
    result = train(model, data, options, device, resume_path=resume_path, log_dir=log_dir,
                   fingerprint=run_fingerprint(params, spec.text, meta))
    save_checkpoint(model_path, result.model, spec, meta, params,
                    epoch=len(result.history) - 1, best_epoch=result.best_epoch)
    Path(resume_path).unlink(missing_ok=True)
    last = result.history[-1]
    split = "val" if "val/accuracy" in last else "train"  # data.val_split: 0 has no val metrics
    print(f"trained {len(result.history)} epochs on {device}: {split} accuracy {last[split + '/accuracy']:.4f}; "
          f"first step {result.first_step_seconds:.2f}s (includes compile), "
          f"rest {result.train_seconds:.2f}s; wrote {model_path}")
    return result


@exit_on_user_error
def main() -> None:
    run()


if __name__ == "__main__":
    main()

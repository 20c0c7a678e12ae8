"""Fit the recipe to the data: a batch size that gives an epoch enough steps, and
warnings when it does not.

A recipe is written for a dataset (airbench's batch 1024 for CIFAR-10's 50,000 images);
on a training set of 1,400 images the same batch is one step an epoch that leaves a third
of the images out. The resolve stage knows the prepared training set (meta.json) and
calls `fit_batch_size`: a batch that came from the recipe is capped so that an epoch
has at least MIN_STEPS steps; a batch the user set in params.yaml is kept, with a
warning when it gives very few steps or leaves many images out (the loop drops the
last partial batch of every epoch).
"""
from __future__ import annotations

from dataclasses import dataclass, field

MIN_STEPS = 20        # steps an epoch at least, when resolve picks the batch
FEW_STEPS = 10        # fewer steps an epoch than this is warned about
DROPPED_SHARE = 0.1   # an epoch leaving out more than this share of the images is warned about


@dataclass
class BatchFit:
    batch_size: int
    capped_from: int | None = None          # the recipe's batch, when it was capped
    warnings: list[str] = field(default_factory=list)

    def steps(self, train_images: int) -> int:
        return train_images // self.batch_size


def capped_batch(train_images: int) -> int:
    """The largest batch that gives `train_images` at least MIN_STEPS steps."""
    return max(1, train_images // MIN_STEPS)


def fit_batch_size(batch_size: int, train_images: int, set_by_user: bool) -> BatchFit:
    fit = BatchFit(batch_size)
    smaller = capped_batch(train_images)  # the largest batch with MIN_STEPS steps
    if not set_by_user and train_images // batch_size < MIN_STEPS and smaller < batch_size:
        fit = BatchFit(smaller, capped_from=batch_size)
    suggestion = (f"-S train.batch_size={smaller}" if smaller < fit.batch_size
                  else "more images, or more epochs (train.epochs)")
    if 0 < train_images < fit.batch_size:  # training takes them all as one batch: say so, record that
        fit.warnings.append(f"warning: train.batch_size {fit.batch_size} is more than the {train_images:,} "
                            f"training images: each epoch is one step on all of them, too few to learn "
                            f"much; {suggestion}")
        fit.batch_size = train_images
        return fit
    steps = train_images // fit.batch_size
    dropped = train_images - steps * fit.batch_size
    where = f"train.batch_size {fit.batch_size} on {train_images:,} training images"  # grouped, as resolve's
    if steps < FEW_STEPS:
        plural = "" if steps == 1 else "s"
        fit.warnings.append(f"warning: {where} is {steps} step{plural} an epoch, too few to learn "
                            f"much; {suggestion}")
    if steps and dropped / train_images > DROPPED_SHARE:
        fit.warnings.append(f"warning: {where} leaves {dropped:,} images ({dropped / train_images:.0%}) "
                            f"out of every epoch (the last partial batch is dropped); {suggestion}")
    return fit


def fit_to_data(train_options: dict, train_images: int, params_path) -> dict:
    """`train_options` with the batch size fitted to `train_images` (a copy): what the
    resolve stage writes to params.resolved.yaml, and what a stage run without a current
    one resolves in memory. A batch size written in the params file at `params_path`
    counts as the user's."""
    from cnnspec.pipeline.params import read_yaml_mapping

    written = read_yaml_mapping(params_path).get("train") or {}
    fit = fit_batch_size(train_options["batch_size"], train_images, written.get("batch_size") is not None)
    return {**train_options, "batch_size": fit.batch_size}

"""How the weights are optimized, each piece chosen by name in params.yaml `train`:
optimizers, learning-rate schedules, losses, class weights, early stopping,
lookahead and an EMA of the weights.

Every registry is a dict from the name in params.yaml to a small function, so
adding an option is adding one entry.
"""
from __future__ import annotations

import copy
import functools
import inspect
import math

import torch
import torch.nn.functional as F

from cnnspec.errors import ParamsError, listed_names

# ---------------------------------------------------------------- optimizers
# Each is torch's class and its keyword arguments from the `train.optimizer` options;
# it gets the model's parameter groups (lr and weight decay already multiplied by the
# layers' lr_mult / wd_mult).

OPTIMIZERS = {
    "sgd": (torch.optim.SGD, lambda o: {"lr": o["lr"], "momentum": o["momentum"], "weight_decay": o["weight_decay"],
                                        "nesterov": bool(o["nesterov"]) and o["momentum"] > 0}),
    "adam": (torch.optim.Adam, lambda o: {"lr": o["lr"], "betas": tuple(o["betas"]),
                                          "weight_decay": o["weight_decay"]}),
    "adamw": (torch.optim.AdamW, lambda o: {"lr": o["lr"], "betas": tuple(o["betas"]),
                                            "weight_decay": o["weight_decay"]}),
    "rmsprop": (torch.optim.RMSprop, lambda o: {"lr": o["lr"], "momentum": o["momentum"],
                                                "weight_decay": o["weight_decay"]}),
}


def make_optimizer(model, options: dict, compiling: bool = False) -> torch.optim.Optimizer:
    """The optimizer `options` (train.optimizer) names, over the model's parameter
    groups; torch's own class when `compiling` (train.compile), else one without its
    torch.compile marks."""
    optimizer_class, keywords = OPTIMIZERS[options["name"]]
    if not compiling:
        optimizer_class = without_compile_marks(optimizer_class)
    return optimizer_class(model.param_groups(options["lr"], options["weight_decay"]), **keywords(options))


# torch.optim marks these methods for torch.compile (a graph break around step, "do
# not trace" on the others), and each mark imports torch._dynamo on its first call:
# about 1.1 s of every training process's start on a CPU. Only a compiled step can
# use the marks, and cnnspec compiles the model's forward alone, never the optimizer.
COMPILE_MARKED_METHODS = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


@functools.cache
def without_compile_marks(optimizer_class: type) -> type:
    """A subclass of `optimizer_class` whose methods run their bodies without the marks:
    the same arithmetic, state and hooks (step keeps its profiler and step hooks, which
    torch adds to any optimizer class), and no import of torch._dynamo."""
    namespace = {name: inspect.unwrap(getattr(optimizer_class, name)) for name in COMPILE_MARKED_METHODS}
    step_body = inspect.unwrap(optimizer_class.step)

    def step(self, closure=None):
        with torch.set_grad_enabled(self.defaults["differentiable"]):  # what the step's mark does
            return step_body(self, closure)

    namespace["step"] = step
    return type(optimizer_class.__name__, (optimizer_class,), namespace)


# ---------------------------------------------------------------- schedules
# Per-step schedules are LambdaLR factors of each group's own lr, so the layers'
# lr_mult survive. `step` counts optimizer steps already taken (0 for the first).

def warmup_linear_factor(step: int, warmup_steps: int, total_steps: int, final: float,
                         initial: float = 0.0) -> float:
    """Linear warm-up from `initial` to 1 over `warmup_steps`, then linear decay to
    `final` at the last step (airbench's triangle: initial 0.2, final 0.07)."""
    done = step + 1
    if done <= warmup_steps:
        return initial + (1.0 - initial) * done / warmup_steps
    return 1.0 - (1.0 - final) * (done - warmup_steps) / max(1, total_steps - warmup_steps)


def cosine_factor(step: int, total_steps: int, final: float) -> float:
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


class Schedule:
    """A torch scheduler and when to step it: after every batch ("step"), after every
    epoch ("epoch") or after every epoch with the validation loss ("plateau")."""

    def __init__(self, scheduler, when: str):
        self.scheduler, self.when = scheduler, when

    def after_step(self) -> None:
        if self.when == "step":
            self.scheduler.step()

    def after_epoch(self, val_loss: float | None) -> None:
        if self.when == "epoch":
            self.scheduler.step()
        elif self.when == "plateau":
            self.scheduler.step(val_loss)

    def state_dict(self) -> dict:
        return self.scheduler.state_dict() if self.scheduler else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler:
            self.scheduler.load_state_dict(state)


def _warmup_steps(options: dict, steps_per_epoch: int) -> int:
    return round(options["warmup_epochs"] * steps_per_epoch)


def _lambda(optimizer, factor):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _onecycle(optimizer, o, epochs, steps_per_epoch):
    total = epochs * steps_per_epoch
    warmup = o["warmup_epochs"]
    # warmup_epochs < 1 is a fraction of the run (torch's pct_start), else epochs.
    fraction = warmup if warmup < 1 else warmup * steps_per_epoch / total
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=total, pct_start=min(max(fraction, 1.0 / total), 1.0), cycle_momentum=False)


def _plateau(optimizer, o):
    """Keras' ReduceLROnPlateau (seed 000): the lr drops once val_loss has not improved by
    1e-4 for `patience` epochs; torch counts `patience` epochs of grace before that."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=o["factor"], patience=max(0, o["patience"] - 1),
        threshold=1e-4, threshold_mode="abs", min_lr=o["min_lr"])


SCHEDULES = {
    "none": lambda opt, o, epochs, spe: Schedule(None, "never"),
    "plateau": lambda opt, o, epochs, spe: Schedule(_plateau(opt, o), "plateau"),
    "step": lambda opt, o, epochs, spe: Schedule(torch.optim.lr_scheduler.StepLR(
        opt, step_size=o["step_size"], gamma=o["factor"]), "epoch"),
    "cosine": lambda opt, o, epochs, spe: Schedule(_lambda(
        opt, lambda s: cosine_factor(s, epochs * spe, o["final_lr_fraction"])), "step"),
    "onecycle": lambda opt, o, epochs, spe: Schedule(_onecycle(opt, o, epochs, spe), "step"),
    "warmup_linear": lambda opt, o, epochs, spe: Schedule(_lambda(
        opt, lambda s: warmup_linear_factor(s, _warmup_steps(o, spe), epochs * spe,
                                            o["final_lr_fraction"], o["initial_lr_fraction"])), "step"),
}


def make_schedule(optimizer, options: dict, epochs: int, steps_per_epoch: int) -> Schedule:
    return SCHEDULES[options["name"]](optimizer, options, epochs, steps_per_epoch)


# ---------------------------------------------------------------- losses
# Each returns `criterion(logits, labels) -> mean loss`; class weights make it the
# weighted mean (sum of w[y] * loss / sum of w[y]), as torch's cross_entropy does.
# A spec's final softmax is folded into these: the model returns logits.

def focal_loss(logits, labels, gamma: float, alpha: float | None = None, weight=None):
    """Lin et al.'s focal loss: alpha * (1 - p_t)^gamma * -log(p_t), p_t the probability
    of the true class. gamma 0 and alpha None is cross-entropy."""
    log_p = F.log_softmax(logits.float(), dim=1).gather(1, labels[:, None]).squeeze(1)
    losses = -((1.0 - log_p.exp()) ** gamma) * log_p
    if alpha is not None:
        losses = alpha * losses
    if weight is None:
        return losses.mean()
    sample_weight = weight[labels]
    return (sample_weight * losses).sum() / sample_weight.sum()


LOSSES = {
    "cross_entropy": lambda o, weight: lambda logits, labels: F.cross_entropy(
        logits.float(), labels, weight=weight, label_smoothing=o["label_smoothing"]),
    "focal": lambda o, weight: lambda logits, labels: focal_loss(
        logits, labels, o["gamma"], o.get("alpha"), weight),
}


def make_loss(options: dict, class_weight: torch.Tensor | None = None):
    return LOSSES[options["name"]](options, class_weight)


def class_weights(labels, classes: list[str], options: dict) -> torch.Tensor | None:
    """Per-class loss weights: `balanced` is scikit-learn's n_samples / (n_classes * count),
    then each class named in `multipliers` is scaled by its factor. None when both are off."""
    multipliers = options["multipliers"]
    if options["mode"] == "none" and not multipliers:
        return None
    labels = torch.as_tensor(labels)
    weights = torch.ones(len(classes))
    if options["mode"] == "balanced":
        counts = torch.bincount(labels.cpu(), minlength=len(classes)).float()
        weights = len(labels) / (len(classes) * counts.clamp(min=1))
    for name, factor in multipliers.items():
        if name not in classes:
            raise ParamsError(f"params.yaml: train.class_weights.multipliers.{name}: "
                              f"unknown class {name!r}; the classes are {listed_names(classes)}")
        weights[classes.index(name)] *= factor
    return weights


# ---------------------------------------------------------------- early stopping

class EarlyStopping:
    """Stop when the monitored metric has not improved by more than `min_delta` for
    `patience` epochs; optionally keep the best weights to restore at the end."""

    def __init__(self, options: dict):
        self.monitor = options["monitor"]
        mode = options["mode"]
        self.mode = mode if mode != "auto" else ("max" if "accuracy" in self.monitor else "min")
        self.patience, self.min_delta = options["patience"], options["min_delta"]
        self.restore_best = options["restore_best"]
        self.best, self.best_epoch, self.wait, self.best_state = None, -1, 0, None

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, epoch: int, metrics: dict, model) -> bool:
        """Record this epoch's metrics; return True when training should stop."""
        value = metrics[self.monitor]
        if self.improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        self.wait += 1
        return self.wait >= self.patience

    def restore(self, model) -> None:
        if self.restore_best and self.best_state is not None:
            model.load_state_dict(self.best_state)

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "best_state": self.best_state}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.wait, self.best_state = state["wait"], state["best_state"]


# ---------------------------------------------------------------- weight averaging

def _float_parameters(model) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.dtype.is_floating_point]


class Lookahead:
    """Zhang et al.'s lookahead: every `steps` optimizer steps,
    slow += alpha * (fast - slow), then fast = slow.

    `schedule: constant` keeps alpha fixed. `schedule: cubic` is airbench's: alpha starts
    at 1 (slow simply follows fast) and falls as the cube of the run's progress to `alpha`
    at the last step, alpha(t) = 1 - (1 - alpha) * (t / total_steps) ** 3; airbench94's
    final alpha is 1 - 0.95 ** 5 = 0.226."""

    def __init__(self, model, steps: int, alpha: float, schedule: str = "constant",
                 total_steps: int = 1):
        self.params = _float_parameters(model)
        self.slow = [p.detach().clone() for p in self.params]
        self.steps, self.alpha, self.count = steps, alpha, 0
        self.schedule, self.total_steps = schedule, max(1, total_steps)

    def alpha_at(self, count: int) -> float:
        if self.schedule == "cubic":
            return 1.0 - (1.0 - self.alpha) * min(1.0, count / self.total_steps) ** 3
        return self.alpha

    @torch.no_grad()
    def after_step(self) -> None:
        self.count += 1
        if self.count % self.steps == 0:
            self.sync()

    @torch.no_grad()
    def sync(self) -> None:
        torch._foreach_lerp_(self.slow, self.params, self.alpha_at(self.count))
        torch._foreach_copy_(self.params, self.slow)

    @torch.no_grad()
    def finish(self) -> None:
        """End training on the slow weights (airbench evaluates those)."""
        torch._foreach_copy_(self.params, self.slow)

    def state_dict(self) -> dict:
        return {"slow": self.slow, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        torch._foreach_copy_(self.slow, state["slow"])
        self.count = state["count"]


class EMA:
    """An exponential moving average of the weights, kept in a copy of the model:
    after every step, avg = decay * avg + (1 - decay) * weights; buffers (batch-norm
    statistics) are copied. The copy is what gets validated and saved."""

    def __init__(self, model, decay: float):
        self.model = copy.deepcopy(model)
        self.model.requires_grad_(False)
        self.source, self.decay = model, decay

    @torch.no_grad()
    def after_step(self) -> None:
        torch._foreach_lerp_(_float_parameters(self.model), _float_parameters(self.source),
                             1.0 - self.decay)
        for average, current in zip(self.model.buffers(), self.source.buffers()):
            average.copy_(current)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)


def check_validation_needs(params: dict, num_val: int) -> None:
    """Early stopping and the plateau schedule watch the validation split."""
    if num_val:
        return
    needs = []
    if params["early_stopping"]["enabled"]:
        needs.append("train.early_stopping.enabled: true")
    if params["scheduler"]["name"] == "plateau":
        needs.append("train.scheduler.name: plateau")
    if needs:
        raise ParamsError(f"params.yaml: {' and '.join(needs)} needs a validation split, but the "
                          "prepared data has no validation image (data.val_split 0, or so small that "
                          "no class gives one); raise data.val_split")

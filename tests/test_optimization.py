"""Each optimization option (optimizer, schedule, loss, early stopping, lookahead, EMA)
changes what training does, as its formula says."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnspec
from cnnspec.errors import ParamsError
from cnnspec.pipeline.params import fill_defaults, load_schema
from cnnspec.training import optimization
from tests.no_torch import run_without_importing


def train_defaults(**sections) -> dict:
    """The `train` section with schema defaults, sections overridden, e.g. optimizer={...}."""
    schema = {"properties": {"train": load_schema()["properties"]["train"]}}
    return fill_defaults({"train": sections}, schema)["train"]


class TinyModel(nn.Module):
    """A hand-written stand-in with the SpecModel methods cnnspec.training.optimization uses."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x)

    def param_groups(self, lr, weight_decay):
        return [{"params": list(self.parameters()), "lr": lr, "weight_decay": weight_decay}]


def one_step(optimizer_options) -> torch.Tensor:
    model = TinyModel()
    optimizer = optimization.make_optimizer(model, optimizer_options)
    torch.manual_seed(1)
    inputs, labels = torch.randn(8, 4), torch.randint(0, 3, (8,))
    for _ in range(2):  # two steps so momentum terms matter
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    return model.linear.weight.detach().clone()


def test_each_optimizer_moves_the_weights_differently():
    base = train_defaults()["optimizer"]
    results = {name: one_step({**base, "name": name, "lr": 0.05}) for name in optimization.OPTIMIZERS}
    start = TinyModel().linear.weight.detach()
    names = list(results)
    for i, name in enumerate(names):
        assert not torch.equal(results[name], start), name
        for other in names[i + 1:]:
            assert not torch.allclose(results[name], results[other]), (name, other)
    plain = one_step({**base, "name": "sgd", "lr": 0.05, "nesterov": False})
    assert not torch.allclose(plain, results["sgd"])  # nesterov matters


def steps_and_state(optimizer, model, steps=3):
    """`steps` steps on fixed data; the weights and the optimizer's state dict after them."""
    torch.manual_seed(1)
    inputs, labels = torch.randn(8, 4), torch.randint(0, 3, (8,))
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    return model.linear.weight.detach().clone(), optimizer.state_dict()


@pytest.mark.parametrize("name", list(optimization.OPTIMIZERS))
def test_the_optimizer_without_compile_marks_steps_and_saves_as_torch_s_own(name):
    """Training (train.compile off) builds optimizers without torch.compile's marks: the
    same weights and state after steps with momentum and weight decay, and the state
    of either class loads into the other (a resume state from an older run)."""
    options = {**train_defaults()["optimizer"], "name": name, "lr": 0.05, "weight_decay": 1e-3}
    unmarked_model, torch_model = TinyModel(), TinyModel()
    unmarked = optimization.make_optimizer(unmarked_model, options)
    own = optimization.make_optimizer(torch_model, options, compiling=True)
    assert type(own) is optimization.OPTIMIZERS[name][0] and type(unmarked).__mro__[1] is type(own)
    weights, state = steps_and_state(unmarked, unmarked_model)
    torch_weights, torch_state = steps_and_state(own, torch_model)
    assert torch.equal(weights, torch_weights)
    assert not torch.equal(weights, TinyModel().linear.weight)
    assert state["param_groups"] == torch_state["param_groups"]
    for slot, values in torch_state["state"].items():
        assert values.keys() == state["state"][slot].keys()
        for key, value in values.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(state["state"][slot][key])), (slot, key)
    unmarked.load_state_dict(torch_state)
    own.load_state_dict(state)
    assert torch.equal(steps_and_state(unmarked, unmarked_model, 1)[0], steps_and_state(own, torch_model, 1)[0])


TRAINING_WITHOUT_DYNAMO = """
from tests.tinytraining import run_training, train_params
from pathlib import Path
params = train_params(epochs=2, compile=False, scheduler={"name": "{scheduler}"}, optimizer={"name": "{optimizer}"},
                      lookahead={"enabled": True}, ema={"enabled": True})
run_training(params, Path(sys.argv[1]))
"""


@pytest.mark.parametrize("optimizer, scheduler", [("sgd", "onecycle"), ("adam", "plateau")])
def test_training_without_compile_never_imports_torch_s_compiler(tmp_path, optimizer, scheduler):
    """torch._dynamo takes about a second to import, a quarter of the train stage's
    start; a run that compiles nothing (optimizer steps, schedules, resume states,
    lookahead and EMA included) must not import it."""
    code = TRAINING_WITHOUT_DYNAMO.replace("{optimizer}", optimizer).replace("{scheduler}", scheduler)
    run_without_importing("torch._dynamo", code, str(tmp_path))
    assert (tmp_path / "resume" / "state.pt").is_file()  # the optimizer's state was saved each epoch


def test_spec_lr_and_wd_multipliers_reach_the_optimizer():
    spec = cnnspec.parse_spec("""name: mult
layers:
  - conv: {filters: 4, bias: false}
  - bn: {lr_mult: 64, wd_mult: 0}
  - global_avg_pool
  - dense: {units: num_classes}
""", "mult.yaml")
    model = cnnspec.build_model(spec, (3, 8, 8), 2)
    optimizer = optimization.make_optimizer(model, {**train_defaults()["optimizer"], "lr": 0.1,
                                              "weight_decay": 1e-3})
    by_lr = {round(group["lr"], 9): group for group in optimizer.param_groups}
    assert set(by_lr) == {0.1, 6.4}
    assert by_lr[6.4]["weight_decay"] == 0
    assert by_lr[0.1]["weight_decay"] == pytest.approx(1e-3)
    bn = dict(model.named_parameters())
    bn_params = {id(p) for name, p in bn.items() if "bn" in name}
    assert {id(p) for p in by_lr[6.4]["params"]} == bn_params


def lr_sequence(scheduler_options, epochs=4, steps_per_epoch=5, lr=1.0):
    model = TinyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    schedule = optimization.make_schedule(optimizer, scheduler_options, epochs, steps_per_epoch)
    seen = []
    for _ in range(epochs):
        for _ in range(steps_per_epoch):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.after_step()
        schedule.after_epoch(val_loss=1.0)
    return seen


def test_warmup_linear_rises_then_falls_to_the_final_fraction():
    options = {**train_defaults()["scheduler"], "name": "warmup_linear", "warmup_epochs": 1,
               "final_lr_fraction": 0.1}
    seen = lr_sequence(options)
    warm, total = 5, 20
    expected = [(s + 1) / warm if s + 1 <= warm else 1 - 0.9 * (s + 1 - warm) / (total - warm)
                for s in range(total)]
    assert seen == pytest.approx(expected)
    assert seen[4] == pytest.approx(1.0) and seen[-1] == pytest.approx(0.1)


def test_warmup_linear_can_start_from_a_fraction_of_lr_like_airbench():
    options = {**train_defaults()["scheduler"], "name": "warmup_linear", "warmup_epochs": 1,
               "initial_lr_fraction": 0.2, "final_lr_fraction": 0.07}
    seen = lr_sequence(options)
    assert seen[:5] == pytest.approx([0.2 + 0.8 * (s + 1) / 5 for s in range(5)])
    assert seen[-1] == pytest.approx(0.07)


def test_cosine_follows_its_formula():
    options = {**train_defaults()["scheduler"], "name": "cosine", "final_lr_fraction": 0.0}
    seen = lr_sequence(options)
    assert seen == pytest.approx([0.5 * (1 + math.cos(math.pi * s / 20)) for s in range(20)])


def test_step_multiplies_by_factor_every_step_size_epochs():
    options = {**train_defaults()["scheduler"], "name": "step", "step_size": 2, "factor": 0.5}
    seen = lr_sequence(options)
    assert seen == pytest.approx([1.0] * 10 + [0.5] * 10)


def test_onecycle_warms_up_from_lr_over_25_and_anneals_by_cosine():
    options = {**train_defaults()["scheduler"], "name": "onecycle", "warmup_epochs": 0.25}
    seen = lr_sequence(options)
    total, peak = 20, 0.25 * 20 - 1  # torch's OneCycleLR: the peak at step pct*total - 1
    initial, final = 1.0 / 25, 1.0 / 25 / 1e4

    def cos_between(start, end, fraction):
        return end + (start - end) / 2 * (1 + math.cos(math.pi * fraction))

    expected = [cos_between(initial, 1.0, s / peak) if s <= peak
                else cos_between(1.0, final, (s - peak) / (total - 1 - peak)) for s in range(total)]
    assert seen == pytest.approx(expected)


def test_plateau_halves_the_lr_after_patience_epochs_without_improvement():
    model = TinyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    options = {**train_defaults()["scheduler"], "name": "plateau", "patience": 2, "factor": 0.5}
    schedule = optimization.make_schedule(optimizer, options, 10, 3)
    lrs = []
    for val_loss in [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5]:
        for _ in range(3):
            schedule.after_step()  # per-step calls must not move a per-epoch schedule
        schedule.after_epoch(val_loss)
        lrs.append(optimizer.param_groups[0]["lr"])
    # Keras' count: the 2nd epoch in a row without improvement cuts the lr
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25]


def test_plateau_respects_min_lr():
    optimizer = torch.optim.SGD(TinyModel().parameters(), lr=1.0)
    options = {**train_defaults()["scheduler"], "name": "plateau", "patience": 0, "min_lr": 0.3}
    schedule = optimization.make_schedule(optimizer, options, 10, 1)
    for _ in range(5):
        schedule.after_epoch(1.0)
    assert optimizer.param_groups[0]["lr"] == 0.3


def test_label_smoothing_changes_the_loss_as_the_formula_says():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 4), torch.randint(0, 4, (6,))
    options = {**train_defaults()["loss"], "name": "cross_entropy", "label_smoothing": 0.2}
    loss = optimization.make_loss(options)(logits, labels)
    log_p = F.log_softmax(logits, 1)
    target = torch.full((6, 4), 0.2 / 4).scatter_(1, labels[:, None], 0.8 + 0.2 / 4)
    assert loss.item() == pytest.approx(-(target * log_p).sum(1).mean().item(), rel=1e-6)
    plain = optimization.make_loss({**options, "label_smoothing": 0.0})(logits, labels)
    assert plain.item() == pytest.approx(F.nll_loss(log_p, labels).item(), rel=1e-6)
    assert loss.item() != pytest.approx(plain.item())


def test_focal_loss_equals_its_formula_and_reduces_to_cross_entropy():
    torch.manual_seed(1)
    logits, labels = torch.randn(10, 3), torch.randint(0, 3, (10,))
    p_true = F.softmax(logits, 1)[torch.arange(10), labels]
    expected = (0.25 * (1 - p_true) ** 2 * -torch.log(p_true)).mean()
    options = {**train_defaults()["loss"], "name": "focal", "gamma": 2.0, "alpha": 0.25}
    assert optimization.make_loss(options)(logits, labels).item() == pytest.approx(expected.item(), rel=1e-5)
    assert optimization.focal_loss(logits, labels, gamma=0.0, alpha=None).item() == pytest.approx(
        F.cross_entropy(logits, labels).item(), rel=1e-6)
    weight = torch.tensor([1.0, 2.0, 3.0])
    weighted = optimization.focal_loss(logits, labels, gamma=0.0, alpha=None, weight=weight)
    assert weighted.item() == pytest.approx(F.cross_entropy(logits, labels, weight=weight).item(), rel=1e-6)


def test_balanced_class_weights_and_multipliers():
    classes = ["cat", "dog", "ship"]
    labels = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)
    weights = optimization.class_weights(labels, classes, {"mode": "balanced", "multipliers": {}})
    assert weights.tolist() == pytest.approx([10 / (3 * 6), 10 / (3 * 3), 10 / (3 * 1)])
    doubled = optimization.class_weights(labels, classes, {"mode": "balanced",
                                                     "multipliers": {"cat": 2.0, "dog": 2.0}})
    assert doubled.tolist() == pytest.approx([2 * 10 / 18, 2 * 10 / 9, 10 / 3])
    assert optimization.class_weights(labels, classes, {"mode": "none", "multipliers": {}}) is None
    only = optimization.class_weights(labels, classes, {"mode": "none", "multipliers": {"ship": 3.0}})
    assert only.tolist() == [1.0, 1.0, 3.0]


def test_unknown_class_in_multipliers_is_a_params_error_naming_key_and_classes():
    with pytest.raises(ParamsError) as caught:
        optimization.class_weights(torch.tensor([0, 1]), ["cat", "dog"],
                             {"mode": "balanced", "multipliers": {"kat": 2.0}})
    message = str(caught.value)
    assert "train.class_weights.multipliers.kat" in message and "cat, dog" in message
    assert "\n" not in message


def early_stopping(**overrides):
    return optimization.EarlyStopping({**train_defaults()["early_stopping"], "enabled": True, **overrides})


def test_early_stopping_stops_after_patience_and_restores_the_best_weights():
    model = TinyModel()
    stopper = early_stopping(monitor="val_loss", patience=2)
    losses = [1.0, 0.5, 0.6, 0.7, 0.4]
    stopped_at, best_weight = None, None
    for epoch, value in enumerate(losses):
        with torch.no_grad():
            model.linear.weight.fill_(epoch)
        if epoch == 1:
            best_weight = model.linear.weight.clone()
        if stopper.update(epoch, {"val_loss": value}, model):
            stopped_at = epoch
            break
    assert stopped_at == 3 and stopper.best_epoch == 1
    stopper.restore(model)
    assert torch.equal(model.linear.weight, best_weight)


def test_early_stopping_auto_mode_maximises_accuracy_and_min_delta_counts():
    stopper = early_stopping(monitor="val_accuracy", patience=1, min_delta=0.05)
    assert stopper.mode == "max"
    assert not stopper.update(0, {"val_accuracy": 0.5}, TinyModel())
    assert stopper.update(1, {"val_accuracy": 0.53}, TinyModel())  # +0.03 < min_delta
    forced = early_stopping(monitor="val_accuracy", mode="min", patience=1)
    forced.update(0, {"val_accuracy": 0.5}, TinyModel())
    assert forced.update(1, {"val_accuracy": 0.9}, TinyModel())  # higher is worse in min mode


def test_lookahead_pulls_fast_weights_toward_slow_every_k_steps():
    model = TinyModel()
    slow_start = model.linear.weight.detach().clone()
    lookahead = optimization.Lookahead(model, steps=3, alpha=0.5)
    for step in range(1, 4):
        with torch.no_grad():
            model.linear.weight.add_(1.0)
        lookahead.after_step()
        if step < 3:
            assert torch.equal(model.linear.weight, slow_start + step)
    expected = slow_start + 0.5 * 3.0  # slow += 0.5 * (fast - slow); fast = slow
    assert torch.allclose(model.linear.weight, expected)
    assert torch.allclose(lookahead.slow[0], expected)


def test_cubic_lookahead_follows_fast_weights_early_and_holds_back_late():
    """airbench's schedule: alpha(t) = 1 - (1 - alpha) * (t / T) ** 3."""
    lookahead = optimization.Lookahead(TinyModel(), steps=5, alpha=1 - 0.95 ** 5, schedule="cubic",
                                 total_steps=100)
    assert lookahead.alpha_at(0) == 1.0
    assert abs(lookahead.alpha_at(50) - (1 - 0.95 ** 5 * 0.125)) < 1e-12
    assert abs(lookahead.alpha_at(100) - (1 - 0.95 ** 5)) < 1e-12
    assert optimization.Lookahead(TinyModel(), 5, 0.5).alpha_at(100) == 0.5

    model = TinyModel()
    slow_start = model.linear.weight.detach().clone()
    lookahead = optimization.Lookahead(model, steps=2, alpha=0.2, schedule="cubic", total_steps=4)
    for _ in range(4):
        with torch.no_grad():
            model.linear.weight.add_(1.0)
        lookahead.after_step()
    # sync at step 2: alpha 1 - 0.8 / 8 = 0.9 -> slow = start + 1.8;
    # sync at step 4: fast = slow + 2, alpha 0.2 -> slow = start + 1.8 + 0.4
    assert torch.allclose(model.linear.weight, slow_start + 2.2)


def test_ema_averages_weights_with_its_decay():
    model = TinyModel()
    start = model.linear.weight.detach().clone()
    ema = optimization.EMA(model, decay=0.9)
    with torch.no_grad():
        model.linear.weight.add_(1.0)
    ema.after_step()
    assert torch.allclose(ema.model.linear.weight, start + 0.1)
    with torch.no_grad():
        model.linear.weight.add_(1.0)
    ema.after_step()
    assert torch.allclose(ema.model.linear.weight, 0.9 * (start + 0.1) + 0.1 * (start + 2.0))
    assert torch.equal(model.linear.weight, start + 2.0)  # the trained weights are untouched


def test_scheduler_states_load_back_with_weights_only(tmp_path):
    """Resume states go through torch.load(weights_only=True): every schedule's state must."""
    for name in optimization.SCHEDULES:
        optimizer = torch.optim.SGD(TinyModel().parameters(), lr=0.1)
        schedule = optimization.make_schedule(optimizer, {**train_defaults()["scheduler"], "name": name}, 3, 4)
        optimizer.step()
        schedule.after_step()
        torch.save({"s": schedule.state_dict(), "o": optimizer.state_dict()}, tmp_path / "s.pt")
        loaded = torch.load(tmp_path / "s.pt", weights_only=True)
        again = optimization.make_schedule(torch.optim.SGD(TinyModel().parameters(), lr=0.1),
                                     {**train_defaults()["scheduler"], "name": name}, 3, 4)
        again.load_state_dict(copy.deepcopy(loaded["s"]))
        assert again.state_dict() == schedule.state_dict(), name

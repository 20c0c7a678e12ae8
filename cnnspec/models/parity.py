"""Is a spec the same network as a PyTorch model? The check behind `cnnspec import` and the
shipped specs' tests.

    result = check_parity(spec, torchvision.models.get_model("resnet50", num_classes=10), sizes=(32, 64))
    result.problems        # [] when they are the same network

Same network means: the same trainable parameter count (the spec's, counted without torch,
against the model's), every tensor of the model copied into the spec's network by structure
(cnnspec/models/weights.py: none left over on either side), and then the same logits in
float64 on random images at each input size. Before the copy the reference gets values that
a fresh model lacks, so a wrong wiring cannot hide behind them: batch-norm running means,
variances and affine parameters drawn at random, and every parameter that was initialised to
one constant (layer scale's 1e-6, a norm's ones and zeros) drawn at random too.
"""
from __future__ import annotations

from dataclasses import dataclass, field

RTOL = 1e-7  # float64 logits of two equal networks differ by summation order only


@dataclass
class Parity:
    """The outcome of check_parity: problems is empty when the networks are the same."""

    spec_params: int
    reference_params: int
    transfer: object
    differences: dict = field(default_factory=dict)   # input size -> largest |logit difference|
    problems: list = field(default_factory=list)

    def summary(self) -> str:
        sizes = ", ".join(f"{size}x{size}: {diff:.1e}" for size, diff in self.differences.items())
        return (f"{self.spec_params:,} trainable parameters (reference {self.reference_params:,}); "
                f"{len(self.transfer.copied)} of {self.transfer.total} tensors copied by structure; "
                f"largest logit difference in float64 {sizes or 'not measured'}")


def trainable_count(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def make_statistics_nontrivial(model, seed: int = 0) -> None:
    """Random running statistics and affine parameters for every batch norm, random values for
    every parameter initialised to a single constant: a check that copies weights then tests
    something, whatever the fresh model's values were."""
    import torch

    generator = torch.Generator().manual_seed(seed)

    def uniform(tensor, low, high):
        return torch.rand(tensor.shape, generator=generator, dtype=torch.float64).to(tensor.dtype) \
            * (high - low) + low

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                module.running_mean.copy_(uniform(module.running_mean, -0.2, 0.2))
                module.running_var.copy_(uniform(module.running_var, 0.5, 2.0))
        for parameter in model.parameters():
            if parameter.numel() > 1 and bool((parameter == parameter.flatten()[0]).all()):
                constant = float(parameter.flatten()[0])
                if constant == 0.0:
                    parameter.copy_(uniform(parameter, -0.1, 0.1))
                else:
                    parameter.copy_(uniform(parameter, 0.5, 1.5) * (1.0 if abs(constant) >= 0.5 else 0.5))


def float64_from_reference(build, reference):
    """The module `build` makes, in float64, holding `reference`'s tensors where they fit by
    structure (shared, not copied) and zeros elsewhere (the transfer reports those): built
    on the meta device, so no weight is randomly initialized or allocated twice (seconds
    for VGG's 134M parameters). Returns (module, transfer)."""
    import torch

    from cnnspec.models.weights import load_by_structure

    with torch.device("meta"):
        module = build()
    module = module.double().eval()
    transfer = load_by_structure(module, reference, assign=True)
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_meta:
            owner_name, _, key = name.rpartition(".")
            owner = module.get_submodule(owner_name)
            zeros = torch.zeros(tensor.shape, dtype=tensor.dtype)
            if isinstance(tensor, torch.nn.Parameter):
                setattr(owner, key, torch.nn.Parameter(zeros, requires_grad=tensor.requires_grad))
            else:
                owner.register_buffer(key, zeros)
    return module, transfer


def check_parity(spec, reference, sizes=(32, 64), num_classes: int = 10, batch: int = 1,
                 seed: int = 0) -> Parity:
    """Compare the spec's network with `reference` (an nn.Module built for num_classes),
    in float64 on `batch` random images of each square size in `sizes`."""
    import torch

    from cnnspec.models.compiler import build_model
    from cnnspec.models.summary import summarize

    reference = reference.double().eval()
    make_statistics_nontrivial(reference, seed)
    spec_params = summarize(spec, (3, sizes[0], sizes[0]), num_classes).trainable
    parity = Parity(spec_params, trainable_count(reference), None)
    if parity.spec_params != parity.reference_params:
        parity.problems.append(f"trainable parameters: {parity.spec_params:,} in the spec, "
                               f"{parity.reference_params:,} in the reference")
    generator = torch.Generator().manual_seed(seed)
    for size in sizes:
        ours, transfer = float64_from_reference(
            lambda size=size: build_model(spec, (3, size, size), num_classes, load_weights=False), reference)
        if parity.transfer is None:
            parity.transfer = transfer
            if transfer.fresh or transfer.unused or not transfer.copied:
                parity.problems.append(transfer.report("the reference"))
        images = torch.randn(batch, 3, size, size, generator=generator, dtype=torch.float64)
        with torch.no_grad():
            expected, got = reference(images), ours(images)
        if got.shape != expected.shape:
            parity.problems.append(f"{size}x{size}: logits of shape {tuple(got.shape)}, "
                                   f"the reference's {tuple(expected.shape)}")
            continue
        difference = float((got - expected).abs().max())
        parity.differences[size] = difference
        if difference > RTOL * max(1.0, float(expected.abs().max())):
            parity.problems.append(f"{size}x{size}: logits differ by up to {difference:.3g} "
                                   f"(largest logit {float(expected.abs().max()):.3g})")
    return parity

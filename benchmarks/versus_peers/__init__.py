"""cnnspec against what a user would pick instead: the same network, on the same real
data, with the same recipe, trained by
  cnnspec    `cnnspec.training.loop.train`, called as stages/train.py calls it (resume state
             and DVCLive log written every epoch, to a temporary folder);
  keras      Keras 3 on its torch backend, `model.fit` on numpy arrays (the seeds' API),
             one unshuffled fit call per epoch, the model written with keras layers
             mirroring the spec;
  lightning  PyTorch Lightning, `Trainer.fit` with a LightningModule and DataLoaders
             (defaults kept: checkpoint and logger in a temporary folder);
  plain      a script in the style of torchvision's reference train.py: a Dataset that
             converts and normalizes each image, a DataLoader with workers, a loop that
             reads loss.item() every step, an evaluate() over a test DataLoader.
Lightning and plain train the same hand-written nn.Module (nn.Sequential, or
torchvision's resnet18 with the CIFAR stem), not cnnspec's compiled model.

    python -m benchmarks.versus_peers                       # simcnn + ironhack_cnn, 6,400 images, CPU
    python -m benchmarks.versus_peers --quick              # seconds: a tiny subset, one epoch
    python -m benchmarks.versus_peers --device cuda --models simcnn ironhack_cnn resnet18_cifar \\
        --train-images 0 --epochs 5 --repeats 3            # all 60,000 images on a GPU
    python -m benchmarks.versus_peers --recipes own --models fashion_cpu --train-images 0 \\
        --test-images 10000 --epochs 5 --repeats 3 --target 0.90   # each framework's own recipe

Data: Fashion-MNIST from Debian (/usr/share/datasets/fashion-mnist/), decoded and
described by cnnspec's own `get_dataset(...).decode` and `prepare` (no validation split;
per-channel mean/std of the training images, which every framework uses to normalize).
The training set is cut to a whole number of batches so that every framework trains
the same images per epoch (cnnspec drops a partial last batch, Keras does not), and
all four see them in cnnspec's order: each epoch's torch.randperm from a generator seeded
as cnnspec's loop seeds it (`cnnspec_epoch_orders`), served to Lightning and plain by a
Sampler and to Keras as the epoch's images gathered in that order (the gather is timed,
as Keras' own shuffle inside fit was). Every
framework evaluates the test set after every epoch (cnnspec through its validation
split, which is the test set here; Keras through `validation_data`; Lightning through
`val_dataloaders`), in batches of max(4 x batch, 1024) as cnnspec does.

Recipe, identical everywhere: Adam (lr --lr, betas 0.9/0.999, eps 1e-8, no weight
decay), cross-entropy on logits (a spec's final softmax is folded into the loss, in Keras
the softmax stays in the model as the seeds wrote it), batch --batch, --epochs epochs, fp32,
no schedule, no augmentation (or a random horizontal flip with --hflip).

With --recipes own each framework trains the network with its own idiomatic best
recipe instead (own_recipes.py; fashion_cpu, whose spec names the CPU speedrun recipe,
is the model it is meant for):
  cnnspec    the spec's recipe (recipes/<name>.yaml over params.yaml's train defaults)
             resolved by the resolve stage's own functions (`load_params`, `fit_to_data`),
             --epochs as train.epochs, channels-last on; cpu_precision, lookahead,
             augmentation as the recipe says (fashion_cpu: Nesterov SGD under onecycle,
             label smoothing, flips + 2-pixel translations, lookahead, bf16 autocast on a
             CPU with bf16 instructions, batch 256);
  lightning  what Lightning expresses of that recipe: torch.optim.SGD with its lr,
             momentum, Nesterov and weight decay, OneCycleLR stepped every batch with the
             recipe's warm-up (cycle_momentum=False, as cnnspec's onecycle), CrossEntropyLoss
             (label_smoothing), RandomCrop(size, padding=translate, padding_mode="reflect")
             and RandomHorizontalFlip in the Dataset, Trainer(precision="bf16-mixed") where
             the recipe asks for bf16 and the CPU has it (else "32-true"), the recipe's batch;
  plain      the same in fp32 (torchvision's reference script autocasts on CUDA only), NCHW;
  keras      Adam() with Keras' defaults (lr 1e-3, eps 1e-7), batch --batch, the seeds'
             callbacks ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2) and
             EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True), kept
             across the per-epoch fit calls as one fit call keeps them; no augmentation.
Left out of Lightning and plain, since neither expresses them without custom code:
lookahead, EMA, channels-last. Test-time augmentation is in none of the four: it is
cnnspec's evaluate stage, not the per-epoch test evaluation that is timed. The same
initial weights, cnnspec's data order (its augmentation draws replayed so that later
epochs stay in step) and the evaluation every epoch stay; the training set is cut to
whole batches of the recipe's batch (Keras may end an epoch on a partial batch of the
same images). Keras may stop before --epochs (EarlyStopping); its final accuracy is that
of the weights it restores. The header and a table say which recipe each framework ran;
--json records the mode, those lines and cnnspec's resolved recipe. --lr and --hflip do
not apply.

Runs are interleaved in one process (repeat r runs every model and framework, the
framework order rotating by one each repeat) and repeated --repeats times. On a CPU the
process keeps freed memory for reuse from the start (glibc's mallopt, as cnnspec's
training sets it), so every framework allocates the same way. Printed per
model and framework: seconds per epoch (median over all epochs of all repeats, with the
min-max), training images/s (images of an epoch over the median epoch, test evaluation
included), seconds to --target test accuracy (median over repeats, from the start of
the fit call), final test accuracy (median), peak memory (CUDA: max_memory_allocated;
CPU: peak PSS of the process and its DataLoader workers, sampled from /proc every
0.1 s; the process holds all four frameworks' libraries, so the figure includes them),
and each peer's ratio to cnnspec (peer / cnnspec for times: above 1 = cnnspec faster;
the median over repeats of the ratio within each repeat, which cancels load that drifts
between repeats on a shared machine; per epoch, the whole fit's time over its epochs).
Parameter counts (trainable, and non-trainable buffers such as batch-norm statistics)
must be equal across the four, and all four start from cnnspec's initial weights (copied
into the torch module and, converted to Keras' layouts, into the Keras model; their
outputs on a batch must agree within 1e-4), or the script stops before training. Final accuracies
more than --accuracy-tolerance apart are flagged. Never asserts a timing.

Files: data.py (the task every framework gets: images, epoch orders, loaders),
cnnspec_train.py, keras_fit.py, lightning_fit.py, plain_loop.py (one per framework),
own_recipes.py (--recipes own: the resolved recipe and its translations),
torch_models.py (the hand-written torch networks), same_network.py (equal weights and
parameter counts, checked before training), measure.py (peak memory, interleaved
runs), report.py (medians, ratios, the table), pipeline.py (`dvc repro` end to end),
__main__.py (the command line).
"""
from benchmarks.versus_peers import own_recipes  # noqa: F401
from benchmarks.versus_peers.cli import main  # noqa: F401
from benchmarks.versus_peers.cnnspec_train import (  # noqa: F401
    cnnspec_model,
    cnnspec_params,
    run_cnnspec,
)
from benchmarks.versus_peers.data import (  # noqa: F401  (the names scripts and tests use)
    DEBIAN_FOLDER,
    FRAMEWORKS,
    MODELS,
    BenchmarkMismatch,
    EpochOrderSampler,
    ImageArrays,
    Run,
    Task,
    cnnspec_epoch_orders,
    fashion_task_data,
    loaders,
    whole_batches,
)
from benchmarks.versus_peers.keras_fit import (  # noqa: F401
    import_keras,
    keras_dense_kernel,
    keras_model,
    run_keras,
    set_keras_weights,
)
from benchmarks.versus_peers.lightning_fit import run_lightning  # noqa: F401
from benchmarks.versus_peers.pipeline import dvc_repro, write_fashion_subset  # noqa: F401
from benchmarks.versus_peers.plain_loop import run_plain  # noqa: F401
from benchmarks.versus_peers.report import Row, markdown_table, summarize  # noqa: F401
from benchmarks.versus_peers.same_network import (  # noqa: F401
    check_same_start,
    parameter_counts,
    start_logits,
)
from benchmarks.versus_peers.torch_models import (  # noqa: F401
    copy_torch_weights,
    torch_architecture,
    torch_counts,
    torch_model,
)


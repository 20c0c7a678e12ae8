"""The training part: turning a model and prepared data into trained weights. It owns the
training loop (loop), the device and precision (device), what a run shows and its cost
estimate (progress), how a run stops early (stops), optimizers and schedules
(optimization), batch augmentation (augment), multi-process training (distributed),
starting from a checkpoint (finetune) and the did-it-learn verdict (learning_check).

It may import the base modules, layers, spec, models and data; settings arrive as
arguments (the pipeline part reads params.yaml and passes them in).
"""

"""The training part: turning a model and prepared data into trained weights. It owns the
training loop (loop), optimizers and schedules (optimization), batch augmentation
(augment), multi-process training (distributed), starting from a checkpoint (finetune),
the pre-flight learning check (learning_check) and cost estimates (cost).

It may import the base modules, layers, spec, models and data; settings arrive as
arguments (the pipeline part reads params.yaml and passes them in).
"""

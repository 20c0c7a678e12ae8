"""The inference part: using a trained model. It owns load_model / predict and the
`cnnspec predict` command (predict), ONNX and TorchScript export (export) and the
evaluation report (evaluation).

It may import every part below it: base, layers, spec, models, data, training.
"""

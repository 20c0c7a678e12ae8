"""The inference part: using a trained model. It owns load_model / predict and the
`cnnspec predict` command (predict), the image files that command is given
(image_paths), an ONNX model run by onnxruntime (onnx_model), ONNX and TorchScript
export (export, onnx_graph, metadata) and the evaluation report (evaluation).

It may import every part below it: base, layers, spec, models, data, training.
"""

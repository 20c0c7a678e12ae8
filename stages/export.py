"""Export stage (optional; export/dvc.yaml): models/model.pt -> models/export/model.onnx
(or model.torchscript.pt), checked against PyTorch on data/prepared's test images.

    python stages/export.py        (reads params.yaml: export)
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python stages/<name>.py`: import this checkout's cnnspec
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnnspec.errors import end_finished_script, exit_on_user_error, terminate_like_interrupt
from cnnspec.paths import EXPORT, MODEL, PARAMS, PREPARED
from cnnspec.pipeline.params import load_stage_params, load_workspace_plugins


@exit_on_user_error
def main() -> None:
    terminate_like_interrupt()  # SIGTERM (dvc, kill): temporaries removed, exit 143
    params = load_stage_params(PARAMS, sections=["export"])["export"]
    load_workspace_plugins(PARAMS)  # the workspace's own model.plugins: a checkpoint never imports code
    # torch loads only after params.yaml passed, so a typo fails in a blink.
    from cnnspec.inference.export import SUFFIXES, TOLERANCE, export

    output = EXPORT / f"model{SUFFIXES[params['format']]}"
    result = export(MODEL, params["format"], output, PREPARED, params["opset"], progress=True)
    print(f"wrote {output}: matches PyTorch within {TOLERANCE:g} (largest difference "
          f"{result['difference']:.1e}) on {result['checked_on']}")


if __name__ == "__main__":
    main()
    end_finished_script()

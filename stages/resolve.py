"""Stage 3 of 6, resolve: write params.resolved.yaml, the params train and evaluate run with.

    python stages/resolve.py

params.yaml picks a recipe (`recipe: auto` takes the one model.spec names) and sets
what differs from it; this stage merges the two (cnnspec/pipeline/recipes.py), checks the
result against the params schema, and writes it out whole. DVC tracks it as the
train and evaluate stages' params file and they read their values from it
(cnnspec.pipeline.params.load_resolved_params), so `dvc params diff` and
`dvc exp show` show the values a run really used, not only the overrides.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python stages/resolve.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from cnnspec.atomic import write_text
from cnnspec.errors import CnnspecError, exit_on_user_error
from cnnspec.paths import PARAMS, RESOLVED_PARAMS
from cnnspec.pipeline.dvc_runs import busy_message, other_runs
from cnnspec.pipeline.params import load_params

HEADER = """\
# Written by `dvc repro` (stage resolve) from params.yaml and {recipe}:
# the params the train and evaluate stages ran with. Edit those, not this file.
"""


def resolve(params_path=PARAMS, resolved_path=RESOLVED_PARAMS) -> dict:
    params = load_params(params_path, sections=["recipe", "model", "train", "evaluate"])
    text = HEADER.format(recipe="no recipe" if params["recipe"] == "none"
                                  else f"recipes/{params['recipe']}.yaml") + yaml.safe_dump(params, sort_keys=False)
    write_text(resolved_path, text)
    return params


@exit_on_user_error
def main() -> None:
    runs = other_runs()
    if runs:  # two runs in one workspace overwrite each other's files: stop before that
        raise CnnspecError(busy_message(runs))
    params = resolve()
    print(f"recipe {params['recipe']} for {params['model']['spec']} -> {RESOLVED_PARAMS}")


if __name__ == "__main__":
    main()

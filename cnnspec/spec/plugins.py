"""Layer types from the user's own code: a plugin is a Python module that calls
`cnnspec.register_layer(name, LayerRule(shape, build), schema={...})` when imported.

    load_plugins(["mylayers", "tools/blur_layer.py"])   # a module name, or the path of a .py file

Where plugins come from: `cnnspec --plugin MODULE ...` on the command line, `model.plugins`
in params.yaml for the pipeline (load_params imports them when it reads the model
section, and a checkpoint remembers them through its params, so evaluation rebuilds the
same model). A plugin is ordinary code run by an ordinary import: name only modules you
would run yourself. Nothing in a spec file can load one.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from cnnspec.errors import CnnspecError
from cnnspec.layers import registry
from cnnspec.regular_files import not_a_regular_file


class PluginError(CnnspecError):
    """A plugin module that cannot be found or fails while it is imported."""

    exit_code = 2


def load_plugin(name: str):
    """Import one plugin (once): `package.module`, or a path ending in .py."""
    try:
        if name.endswith(".py"):
            path = Path(name).resolve()
            # the folder's digest too: pa/layers.py and pb/layers.py are two plugins
            folder = hashlib.sha256(str(path.parent).encode()).hexdigest()[:8]
            module_name = f"cnnspec_plugin_{path.stem}_{folder}"
            if module_name in sys.modules:
                return sys.modules[module_name]
            kind = not_a_regular_file(path)
            if kind:  # a FIFO would block the import: say what the path is instead
                raise PluginError(f"plugin {name}: " + ("no such file" if kind == "missing" else
                                                        f"{kind}, not a regular file"))
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            before = set(registry.LAYERS)
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[module_name]
                for layer_type in set(registry.LAYERS) - before:  # fixed and loaded again, it registers anew
                    registry.unregister_layer(layer_type)
                raise
            return module
        return importlib.import_module(name)
    except CnnspecError:
        raise
    except ModuleNotFoundError as missing:
        raise PluginError(f"plugin {name}: {missing} (a module on sys.path, or the path of a .py file)") from None
    except Exception as failure:  # the plugin's own bug: say which plugin, keep the cause
        raise PluginError(f"plugin {name} failed while loading: {type(failure).__name__}: {failure}") from failure


def load_plugins(names) -> list:
    """Import each plugin in `names` (a list of module names or .py paths; one name alone
    is taken as a list of one)."""
    if isinstance(names, (str, Path)):
        names = [names]
    return [load_plugin(str(name)) for name in names or ()]

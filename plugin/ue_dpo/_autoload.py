"""Post-import hooks, loaded from `ue_dpo_autoload.pth` at interpreter start.

When a harness module named in `POST_IMPORT_HOOKS` is imported, the named
integration is applied right after it executes. Nothing is imported eagerly,
so a Python process that never touches the harness pays one dict lookup per import.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import threading

POST_IMPORT_HOOKS = {
    "llamafactory.train.tuner": "ue_dpo.llamafactory.integration:apply",
    "lmms_eval.tasks": "ue_dpo.evaluation.discovery:apply",
}


class _HookedLoader(importlib.abc.Loader):
    def __init__(self, loader, hook_path: str):
        self._loader = loader
        self._hook_path = hook_path

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        module_name, function_name = self._hook_path.split(":")
        getattr(importlib.import_module(module_name), function_name)()

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    def __init__(self):
        self._resolving = threading.local()

    def find_spec(self, fullname, path, target=None):
        hook_path = POST_IMPORT_HOOKS.get(fullname)
        if hook_path is None or getattr(self._resolving, "active", False):
            return None
        self._resolving.active = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._resolving.active = False
        if spec is None or spec.loader is None:
            return None
        spec.loader = _HookedLoader(spec.loader, hook_path)
        return spec


def install() -> None:
    if not any(isinstance(finder, _PostImportFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PostImportFinder())


install()

"""Import hooks, loaded from `ue_dpo_autoload.pth` at interpreter start.

When a harness module named in `IMPORT_HOOKS` is imported, the named function runs before it executes
(the version check, so a mismatched environment stops before any harness code runs) or right after (the
integration). Nothing is imported eagerly, so a Python process that never touches the harness pays one
dict lookup per import.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import threading

_CHECK_VERSIONS = "ue_dpo.versions:check_supported"
# module -> (run before it executes, run after it executes)
IMPORT_HOOKS = {
    "llamafactory": (_CHECK_VERSIONS, None),
    "lmms_eval": (_CHECK_VERSIONS, None),
    "llamafactory.train.tuner": (None, "ue_dpo.llamafactory.integration:apply"),
    "lmms_eval.tasks": (None, "ue_dpo.evaluation.discovery:apply"),
}


def _call(hook_path: str | None) -> None:
    if hook_path is not None:
        module_name, function_name = hook_path.split(":")
        getattr(importlib.import_module(module_name), function_name)()


class _HookedLoader(importlib.abc.Loader):
    def __init__(self, loader, hooks: tuple[str | None, str | None]):
        self._loader = loader
        self._before, self._after = hooks

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        _call(self._before)
        self._loader.exec_module(module)
        _call(self._after)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _ImportHookFinder(importlib.abc.MetaPathFinder):
    def __init__(self):
        self._resolving = threading.local()

    def find_spec(self, fullname, path, target=None):
        hooks = IMPORT_HOOKS.get(fullname)
        if hooks is None or getattr(self._resolving, "active", False):
            return None
        self._resolving.active = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._resolving.active = False
        if spec is None or spec.loader is None:
            return None
        spec.loader = _HookedLoader(spec.loader, hooks)
        return spec


def install() -> None:
    if not any(isinstance(finder, _ImportHookFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _ImportHookFinder())


install()

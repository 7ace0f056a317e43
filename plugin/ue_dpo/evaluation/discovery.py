"""Make lmms-eval's TaskManager index our task YAMLs, so `--tasks object_halbench` needs no `--include_path`, and
build them as chat tasks for chat models.

Applied by the post-import hook (`ue_dpo._autoload`) when `lmms_eval.tasks` is imported. The patch
wraps `TaskManager.initialize_tasks` to append our folder to `include_path`; every TaskManager
(the CLI's, `simple_evaluate`'s, one built in Python) builds its index through that method.
Built-in names win over included ones in lmms-eval, so our task names avoid the built-in ones.
It also wraps `TaskManager.load_task_or_group`, which lmms-eval calls with `task_type="chat"` for a chat
model, to tell our task classes which variant to build (lmms-eval builds a YAML with `class:` the same way
for every model).
"""

from __future__ import annotations

import functools
from pathlib import Path

from ue_dpo.versions import check_supported

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # ue_dpo/
# In a wheel the YAMLs sit in the package (pyproject force-include); in a source checkout, next to plugin/.
_TASK_DIR_CANDIDATES = (_PACKAGE_DIR / "eval_tasks", _PACKAGE_DIR.parents[1] / "eval_tasks")


def task_dir() -> Path:
    for candidate in _TASK_DIR_CANDIDATES:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"The ue-dpo task YAMLs are in none of {[str(path) for path in _TASK_DIR_CANDIDATES]}; reinstall ue-dpo."
    )


def _same_dir(path: str, other: Path) -> bool:
    return Path(path).expanduser().resolve() == other.resolve()


def apply() -> None:
    check_supported()
    from lmms_eval.tasks import TaskManager

    if getattr(TaskManager.initialize_tasks, "ue_dpo_tasks", False):
        return
    original = TaskManager.initialize_tasks

    @functools.wraps(original)
    def initialize_tasks(self, include_path=None, include_defaults=True):
        paths = [include_path] if isinstance(include_path, str) else list(include_path or [])
        ours = task_dir()
        if not any(_same_dir(path, ours) for path in paths):
            paths.append(str(ours))
        return original(self, include_path=paths, include_defaults=include_defaults)

    initialize_tasks.ue_dpo_tasks = True
    TaskManager.initialize_tasks = initialize_tasks
    load_task_or_group = TaskManager.load_task_or_group

    @functools.wraps(load_task_or_group)
    def load_task_or_group_for_task_type(self, task_list=None, task_type="simple"):
        # local_task imports lmms_eval's task classes; this module runs inside the import of lmms_eval.tasks
        from ue_dpo.evaluation.local_task import LOADING_TASK_TYPE

        token = LOADING_TASK_TYPE.set(task_type)
        try:
            return load_task_or_group(self, task_list, task_type=task_type)
        finally:
            LOADING_TASK_TYPE.reset(token)

    TaskManager.load_task_or_group = load_task_or_group_for_task_type

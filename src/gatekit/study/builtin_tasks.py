"""The built-in tasks, registered through the same hook as any plugin's."""
from gatekit.core.hookspecs import hookimpl
from gatekit.study.data_tasks import DATA_TASKS
from gatekit.study.nature_show import NatureShow
from gatekit.study.tasks import BUILTIN_TASKS

__all__ = ["register_tasks"]


@hookimpl
def register_tasks(register):
    for task in (*BUILTIN_TASKS, NatureShow, *DATA_TASKS):
        register(task)

"""The built-in tasks, registered through the same hook as any plugin's."""
from gatekit.hookspecs import hookimpl
from gatekit.nature_show import NatureShow
from gatekit.tasks import BUILTIN_TASKS


@hookimpl
def register_tasks(register):
    for task in (*BUILTIN_TASKS, NatureShow):
        register(task)

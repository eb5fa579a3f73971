"""The README's Python examples run, in order, as one session."""
import re
from pathlib import Path

import gatekit

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python examples"
    namespace = {}
    try:
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    finally:
        if gatekit.core.plugins.plugin_manager().get_plugin("floored-py") is not None:
            gatekit.unregister_plugin("floored-py")

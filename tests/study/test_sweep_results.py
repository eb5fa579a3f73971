"""The results file as a killed writer or a hand edit leaves it: torn or non-UTF-8 lines and
records lacking fields are skipped with a warning naming the file and the line."""
import json

import pytest

from gatekit.study import compare

from gatekit.study import sweep

from support import ORDER_TASK, TINY_RUN


def one_run(tmp_path):
    out = tmp_path / "out"
    result = compare.compare(["standard"], [ORDER_TASK], seeds=1, out=str(out), workers=0,
                             plots=False, progress=False, **TINY_RUN)
    return out / "runs.jsonl", result


def test_a_non_utf8_last_line_is_skipped_with_a_warning(tmp_path):
    path, first = one_run(tmp_path)
    with open(path, "ab") as stream:
        stream.write(b'{"key": "\xff\xfe torn')            # killed mid-line, mid-character
    with pytest.warns(UserWarning, match=rf"{path}, line 2: skipped: it is not UTF-8"):
        again = compare.compare(["standard"], [ORDER_TASK], seeds=1, out=str(path.parent),
                                workers=0, plots=False, progress=False, **TINY_RUN)
    assert (again.ran, again.skipped) == (0, 1) and again.rows == first.rows


@pytest.mark.parametrize("stub,problem", [
    ({"status": "ok"}, "no key, spec"),
    ({"key": "k", "status": "ok", "final_loss": 0.1}, "no spec"),
    ({"key": "k", "status": "ok", "spec": {"variant": "standard"}}, "no final_loss"),
    ({"key": "k", "status": "failed", "spec": {"variant": "standard"}, "error": "E"},
     "its spec has no task, seed"),
    ({"key": "k", "status": "done"}, "status 'done'"),
])
def test_records_lacking_fields_are_skipped_with_a_warning(tmp_path, stub, problem):
    path, first = one_run(tmp_path)
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(json.dumps(stub) + "\n")
    with pytest.warns(UserWarning, match=rf"{path}, line 2: skipped: {problem}"):
        again = compare.compare(["standard"], [ORDER_TASK], seeds=1, out=str(path.parent),
                                workers=0, plots=False, progress=False, **TINY_RUN)
    assert again.rows == first.rows
    with pytest.warns(UserWarning, match="line 2"):
        assert [r["key"] for r in sweep.read_records(path)] == [first.records[0]["key"]]

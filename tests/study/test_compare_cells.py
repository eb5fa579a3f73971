"""The cells beyond Greff's presets in gatekit compare: GRU, MGU, MUT1, minGRU, minLSTM, sLSTM
and the LayerNorm LSTM train and are summarised like the presets, zoneout is a run setting,
and MUT1 (whose input size must be its hidden size) is refused before anything runs when the
sizes differ."""
import numpy as np
import pytest

import gatekit
from gatekit.nn import initialisers
from gatekit.study import compare, sweep, tasks
from gatekit.train import training

from support import ORDER_TASK, TINY_RUN

NEW_CELLS = ("gru", "mgu", "mut1", "mingru", "minlstm", "slstm", "layernorm")


def test_the_new_cells_take_part_like_the_presets(tmp_path):
    # temporal_order has 8 inputs and TINY_RUN 8 units, so MUT1 fits.
    result = compare.compare(["peephole", *NEW_CELLS], [ORDER_TASK], seeds=1, out=str(tmp_path),
                             workers=0, plots=False, progress=False, **TINY_RUN)
    assert [row["variant"] for row in result.rows] == ["peephole", *NEW_CELLS]
    for row, record in zip(result.rows, result.records):
        cell = gatekit.Cell(8, 8, row["variant"])
        assert row["failed"] == 0 and row["params"] == sum(p.size for p in cell.params.values())
        curve = record["curve"]["eval_loss"]
        assert curve[-1] is not None and curve[-1] != curve[0], row["variant"]
        assert row["variant"] == "peephole" or row["p_value"] is None    # one seed: no test


def test_mut1_with_another_hidden_size_is_refused_before_any_run(tmp_path):
    with pytest.raises(ValueError, match=r"variant 'mut1' adds the event to the memory unit by "
                                         r"unit, so hidden_size must be the task's input size "
                                         r"\(8\); got hidden_size=16"):
        compare.compare(["standard", "mut1"], [ORDER_TASK], seeds=1, out=str(tmp_path),
                        workers=0, plots=False, progress=False, **{**TINY_RUN, "hidden_size": 16})
    assert not (tmp_path / "runs.jsonl").exists()


def test_zoneout_is_a_run_setting_evaluated_at_its_expectation(tmp_path):
    plain = sweep.run_one(sweep.make_spec("gru", ORDER_TASK, 0, **TINY_RUN))
    spec = sweep.make_spec("gru", ORDER_TASK, 0, zoneout=(0.2, 0.2), **TINY_RUN)
    zoned = sweep.run_one(spec)
    assert zoned["spec"]["zoneout"] == [0.2, 0.2] and "zoneout" not in plain["spec"]
    assert zoned["final_loss"] != plain["final_loss"]
    # Evaluation is in eval mode, zoneout's expectation: the untrained model's held-out loss
    # is that of the cell in eval mode, written out here.
    cell = gatekit.Cell(8, 8, "gru", seed=0, zoneout=(0.2, 0.2))
    initialisers.forget_bias(cell, 1.0)
    cell.eval()
    model = training.Model(cell, 4, seed=0)
    x, target = tasks.TemporalOrder(10).sample(TINY_RUN["eval_size"],
                                               np.random.default_rng([0, 2]))
    expected, _ = tasks.TemporalOrder.loss(model(x), target)
    assert zoned["curve"]["eval_loss"][0] == pytest.approx(float(expected), rel=1e-6)
    cell.train()
    in_training, _ = tasks.TemporalOrder.loss(model(x), target)
    assert float(in_training) != pytest.approx(float(expected), rel=1e-6)
    assert sweep.make_spec("gru", ORDER_TASK, 0, zoneout=(0, 0), **TINY_RUN) == \
        sweep.make_spec("gru", ORDER_TASK, 0, **TINY_RUN)
    with pytest.raises(ValueError, match="zoneout must be a pair"):
        sweep.make_spec("gru", ORDER_TASK, 0, zoneout=0.2)
    # GRU's STM is its LTM: one memory, one zoneout, refused before any run.
    with pytest.raises(ValueError, match=r"variant 'gru': zoneout must be \(z, z\) for this "
                                         r"cell"):
        compare.make_specs(["standard", "gru"], [ORDER_TASK], zoneout=(0.2, 0.1), **TINY_RUN)

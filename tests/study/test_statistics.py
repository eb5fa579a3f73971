"""The statistics of gatekit compare against oracles written here: Welch's t-test from its
formula, Holm's adjustment from its definition, the best quartile from NumPy, and the share of
variance explained on tables where the answer is known by construction; then the summary rows
and the loss-against-learning-rate picture built from them."""
import itertools
import math

import numpy as np
import pytest
from scipy import stats

from gatekit.study import compare, statistics, sweep

from support import needs


def welch_by_formula(a, b):
    """Welch (1947): t over the unpooled standard error, Welch-Satterthwaite's degrees of
    freedom, two-sided p from Student's t."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return t, 2 * stats.t.sf(abs(t), df)


def holm_by_definition(p_values):
    """Holm (1979) as adjusted p-values: the i-th smallest of m, p_(i), adjusts to the largest
    of min(1, (m - j + 1) p_(j)) over j <= i (ranks from 1); ties keep their order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: (p_values[i], i))
    rank = {index: r for r, index in enumerate(order, start=1)}
    return [max(min(1.0, (m - rank[j] + 1) * p_values[j])
                for j in range(m) if rank[j] <= rank[i]) for i in range(m)]


def test_welch_matches_its_formula():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.3, 0.1, 12), rng.normal(0.4, 0.3, 7)
    t, p = statistics.welch(a.tolist(), b.tolist())
    t_expected, p_expected = welch_by_formula(a, b)
    assert t == pytest.approx(t_expected, rel=1e-12) and p == pytest.approx(p_expected, rel=1e-9)
    assert (t < 0) == (a.mean() < b.mean())
    assert statistics.welch([0.1, None, 0.2, 0.3], [0.5, 0.6]) == pytest.approx(
        welch_by_formula([0.1, 0.2, 0.3], [0.5, 0.6]), rel=1e-9)


@pytest.mark.parametrize("a,b", [([0.1], [0.2, 0.3]), ([0.1, 0.2], [None, 0.4]),
                                 ([0.2, 0.2], [0.2, 0.2])])
def test_welch_gives_none_where_no_test_is_possible(a, b):
    assert statistics.welch(a, b) == (None, None)


def test_holm_matches_its_definition():
    # The worked example: sorted 0.005 * 4, 0.01 * 3, 0.03 * 2, 0.04 * 1 (kept >= 0.06).
    assert statistics.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    rng = np.random.default_rng(1)
    for m in (1, 2, 5, 9):
        p = (rng.uniform(0, 0.2, m) ** 2).tolist()
        assert statistics.holm(p) == pytest.approx(holm_by_definition(p), rel=1e-12)
    assert statistics.holm([0.9, 0.8]) == [1.0, 1.0]
    # Untested entries stay None and are not counted in m.
    assert statistics.holm([None, 0.01, None, 0.02]) == pytest.approx(
        [None, *holm_by_definition([0.01, 0.02])[:1], None, holm_by_definition([0.01, 0.02])[1]])


def test_best_quartile_is_the_25th_percentile():
    values = [0.5, 0.1, 0.9, 0.3, 0.7, None]
    assert statistics.best_quartile(values) == np.percentile([0.5, 0.1, 0.9, 0.3, 0.7], 25)
    assert statistics.best_quartile([None]) is None


def test_variance_shares_on_a_balanced_table_are_each_factors_variance():
    # loss = a[lr] + b[H] + c[variant], every combination twice: with a balanced design each
    # factor's share is the variance of its effects over the sum of the three variances.
    a = {1e-4: 0.0, 1e-3: 0.4, 1e-2: 1.2, 1e-1: 2.0}
    b = {16: 0.0, 64: 0.3}
    c = {"standard": 0.1, "nfg": -0.1}
    rows = [{"lr": lr, "hidden_size": h, "variant": v, "loss": a[lr] + b[h] + c[v]}
            for lr, h, v, _ in itertools.product(a, b, c, range(2))]
    shares, chance = statistics.variance_shares(rows, ["lr", "hidden_size", "variant"])
    variances = {"lr": np.var(list(a.values())), "hidden_size": np.var(list(b.values())),
                 "variant": np.var(list(c.values()))}
    total = sum(variances.values())
    for factor, variance in variances.items():
        assert shares[factor] == pytest.approx(variance / total, rel=1e-12)
    n = len(rows)
    assert chance == pytest.approx({"lr": 3 / (n - 1), "hidden_size": 1 / (n - 1),
                                    "variant": 1 / (n - 1)})


def test_variance_shares_bin_a_continuous_factor_by_rank():
    rng = np.random.default_rng(2)
    lr = 10 ** rng.uniform(-4, -1, 100)
    noise = rng.uniform(0, 1, 100)
    # The loss is a step function of lr's fifth: five bins of 20 by rank explain all of it.
    fifth = np.argsort(np.argsort(lr)) // 20
    rows = [{"lr": float(x), "noise": float(z), "loss": float(f) ** 2}
            for x, z, f in zip(lr, noise, fifth)]
    shares, chance = statistics.variance_shares(rows, ["lr", "noise"])
    assert shares["lr"] == pytest.approx(1.0)
    # noise is independent of the loss: its share is small, near its chance level 4 / 99.
    assert chance["noise"] == pytest.approx(4 / 99) and shares["noise"] < 0.2


def test_variance_shares_without_spread_are_none():
    rows = [{"lr": 0.1, "loss": 1.0}, {"lr": 0.2, "loss": 1.0}, {"lr": 0.3, "loss": None}]
    assert statistics.variance_shares(rows, ["lr"]) == ({"lr": None}, {"lr": None})


# --- The summary -----------------------------------------------------------------------------

def search_record(variant, trial, final, lr, task="adding:100", search_seed=0):
    name, length = task.split(":")
    spec = {**{k: v for k, v in sweep.SPEC_DEFAULTS.items()
               if k not in ("optimizer", "momentum", "input_noise", "search")},
            "variant": variant, "seed": trial, "task": {"name": name, "length": int(length)},
            "lr": lr, "steps": 10,
            "search": {"seed": search_seed, "trial": trial,
                       "space": {"lr": "loguniform:0.0001,0.1"}}}
    return {"spec": spec, "final_loss": final, "baseline_loss": 1 / 6,
            "solved": final < 0.01, "sequences_to_solve": 160 if final < 0.01 else None,
            "step_seconds": 0.001, "params": 100,
            "curve": {"sequences": [0, 160], "eval_loss": [0.2, final]}}


def search_records():
    rng = np.random.default_rng(4)
    lrs = 10 ** rng.uniform(-4, -1, 8)
    means = {"peephole": 0.05, "nfg": 0.12, "cifg": 0.05, "noaf": 0.09}
    finals = {v: np.abs(rng.normal(m, 0.03, 8)) for v, m in means.items()}
    records = [search_record(v, k, float(finals[v][k]), float(lrs[k]))
               for k in range(8) for v in means]
    return records, finals, lrs


def test_summary_rows_test_each_variant_against_the_baseline():
    records, finals, _ = search_records()
    rows = compare.summarize(records)
    assert [r["variant"] for r in rows] == ["peephole", "nfg", "cifg", "noaf"]
    assert {r["settings"] for r in rows} == {"random search"} and rows[0]["seeds"] == 8
    expected_p = {}
    for row in rows:
        assert row["final_loss_q25"] == pytest.approx(np.percentile(finals[row["variant"]], 25))
        assert row["final_loss_median"] == pytest.approx(np.median(finals[row["variant"]]))
        assert row["baseline"] == "peephole"
        if row["variant"] == "peephole":
            assert row["p_value"] is None and row["welch_t"] is None
            continue
        t, p = welch_by_formula(finals[row["variant"]], finals["peephole"])
        assert row["welch_t"] == pytest.approx(t, rel=1e-9)
        assert row["p_value"] == pytest.approx(p, rel=1e-9)
        expected_p[row["variant"]] = p
    holm = dict(zip(expected_p, holm_by_definition(list(expected_p.values()))))
    for row in rows[1:]:
        assert row["p_holm"] == pytest.approx(holm[row["variant"]], rel=1e-9)
    # Another baseline, and one that is not there.
    by_cifg = compare.summarize(records, baseline="cifg")
    assert by_cifg[2]["p_value"] is None and by_cifg[0]["p_value"] is not None
    assert all(r["p_value"] is None for r in compare.summarize(records, baseline="gru"))
    table = compare.format_table(rows).splitlines()
    assert "vs peephole: p (Holm)" in table[0]
    nfg = next(line for line in table if line.split()[1:2] == ["nfg"])
    assert f"> {expected_p['nfg']:.2g} ({holm['nfg']:.2g})" in nfg


def test_variance_explained_per_variant_and_of_the_variant():
    records, finals, lrs = search_records()
    [entry] = compare.variance_explained(records)
    # lr: the mean over variants of its share among that variant's 8 trials (2 bins of 4).
    per_variant = [statistics.variance_shares(
        [{"lr": float(lrs[k]), "loss": float(finals[v][k])} for k in range(8)], ["lr"])
        for v in finals]
    rows = [{"variant": v, "loss": float(finals[v][k])} for k in range(8) for v in finals]
    [variant_share], [variant_chance] = (d.values() for d in
                                         statistics.variance_shares(rows, ["variant"]))
    assert entry["task"] == "adding:100" and entry["settings"] == "random search"
    assert (entry["runs"], entry["trials"]) == (32, 8)
    assert entry["shares"] == pytest.approx(
        {"lr": np.mean([s["lr"] for s, _ in per_variant]), "variant": variant_share})
    assert entry["chance"] == pytest.approx({"lr": 1 / 7, "variant": 3 / 31})
    assert variant_chance == pytest.approx(3 / 31)
    text = compare.format_variance([entry])
    assert text.startswith("variance of the final loss explained, adding:100 (random search, "
                           "8 trials, 32 runs): ")
    assert f"variant {variant_share:.0%} (chance {3 / 31:.0%})" in text


def test_variance_explained_credits_only_the_hyperparameter_that_matters():
    # The loss of every variant is a step function of lr's fifth (the 5 bins of 40 trials);
    # the batch size was drawn too but does nothing. Pooled over variants, the batch size
    # would take the credit of every difference between trials; within each variant it gets
    # what chance gives it.
    rng = np.random.default_rng(6)
    lrs, batches = 10 ** rng.uniform(-4, -1, 40), rng.choice([16, 32, 64], 40)
    fifth = np.argsort(np.argsort(lrs)) // 8
    records = []
    for v, offset in (("peephole", 0.0), ("nfg", 0.01)):
        for k in range(40):
            record = search_record(v, k, 0.1 - 0.02 * fifth[k] + offset, float(lrs[k]))
            record["spec"]["batch_size"] = int(batches[k])
            record["spec"]["search"]["space"]["batch_size"] = "choice:16,32,64"
            records.append(record)
    [entry] = compare.variance_explained(records)
    assert entry["shares"]["lr"] == pytest.approx(1.0)
    assert entry["shares"]["batch_size"] < 0.1
    # Balanced: the variant's offset (variance 0.005^2) over it plus lr's (0.02^2 var(0..4)).
    assert entry["shares"]["variant"] == pytest.approx(0.005 ** 2 / (0.005 ** 2 + 0.02 ** 2 * 2))


def test_two_searches_in_one_folder_are_told_apart():
    records, _, _ = search_records()
    other = [search_record("peephole", k, 0.1, 0.01, search_seed=5) for k in range(2)]
    rows = compare.summarize(records + other)
    assert [r["settings"] for r in rows if r["variant"] == "peephole"] == [
        "random search seed 0", "random search seed 5"]


def test_loss_against_learning_rate_picture(tmp_path):
    needs("matplotlib")
    records, _, _ = search_records()
    paths = compare.plot(records, str(tmp_path))
    picture = tmp_path / "loss-vs-lr-adding-100.png"
    assert str(picture) in paths
    data = picture.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    # One learning rate: no such picture.
    fixed = [r for r in records if r["spec"]["seed"] == 0]
    assert not any("loss-vs-lr" in p for p in compare.plot(fixed, str(tmp_path / "one")))

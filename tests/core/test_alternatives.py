"""The bench's own formulations of covisit's job (loadtest/alternatives.py: the original
design's dict-of-dicts and the NumPy one) count and score what covisit does, so that
bench_alternatives compares the same job; and the check the bench runs before timing fails
when they do not."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from covisit.core import kernels_topk as kt
from covisit.core.config import ModelConfig
from covisit.core.interning import IdMap
from covisit.core.model import CoVisitModel
from covisit.core.scoring import recommend
from covisit.core.synthetic import zipf_log

# loadtest/ is a folder of scripts, not a package: load the module from its file
_SPEC = importlib.util.spec_from_file_location(
    "alternatives", Path(__file__).resolve().parents[2] / "loadtest" / "alternatives.py")
alt = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(alt)

CONFIGS = [
    ModelConfig(),  # window 2, a little backward, 1/d
    ModelConfig(window=1, backward=0.0, distance="none"),  # the original design's transitions
    ModelConfig(window=4, backward=1.0, distance="linear"),
]
N_ITEMS = 40  # rows stay shorter than top_n, so covisit's serving rows are its whole rows
NAMES = [f"i{i}" for i in range(N_ITEMS)]
KINDS = [alt.DictOfDicts, alt.NumpyCounts]


@pytest.fixture(scope="module")
def log():
    out = zipf_log(3000, N_ITEMS, seed=11, mean_session=6.0)
    same_session = out.seqs[1:] == out.seqs[:-1]
    order = np.argsort(out.seqs, kind="stable")
    repeats = (out.seqs[order][1:] == out.seqs[order][:-1]) & (out.items[order][1:] == out.items[order][:-1])
    # sessions interleave, and items repeat within one (the visit-merging path is exercised)
    assert not same_session.all() and repeats.sum() > 50
    return out


def covisit(config, log):
    model = CoVisitModel(config)
    model.items = IdMap(NAMES)
    model.update_encoded(log.seqs, log.items, log.weights, log.times)
    return model


def fitted(kind, config, log):
    if kind is alt.DictOfDicts:
        counter = alt.DictOfDicts(config, NAMES)
        counter.fit(log.seqs.tolist(), [NAMES[i] for i in log.items.tolist()], log.weights.tolist())
        return counter
    counter = kind(config, NAMES)
    counter.fit(log)
    return counter


def config_id(c):
    return f"w{c.window}-b{c.backward}-{c.distance}"


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_counts_equal_covisits_exact_counts(kind, config, log):
    model = covisit(config, log)
    counter = fitted(kind, config, log)
    alt.check_counts(kind.__name__, model.csr(), counter.row, np.arange(N_ITEMS))
    assert sum(len(counter.row(r)) for r in range(N_ITEMS)) == model.n_links


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_check_counts_fails_on_other_counts(kind, log):
    model = covisit(ModelConfig(), log)
    wider = fitted(kind, ModelConfig(window=3), log)
    with pytest.raises(AssertionError, match="^wider: "):
        alt.check_counts("wider", model.csr(), wider.row, np.arange(N_ITEMS))
    same = fitted(kind, ModelConfig(), log)
    row = max(range(N_ITEMS), key=lambda r: len(same.row(r)))

    def one_count_off(r):
        counts = same.row(r)
        if r == row:
            c = next(iter(counts))
            counts[c] *= 1 + 1e-5
        return counts

    with pytest.raises(AssertionError, match=f"count \\({row}, "):
        alt.check_counts("off", model.csr(), one_count_off, np.arange(N_ITEMS))


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_recommendations_score_as_covisit(kind, config, log):
    assert_scores_as_covisit(covisit(config, log).snapshot(), fitted(kind, config, log), log, seed=3)


def assert_scores_as_covisit(snap, recommender, log, seed: int) -> None:
    """On 30 contexts from the log, `recommender`'s scores equal covisit's co-visitation ones."""
    rng = np.random.default_rng(seed)
    for start in rng.integers(0, len(log.items) - 5, size=30).tolist():
        context = [NAMES[i] for i in log.items[start:start + 5].tolist()]
        want = [r.score for r in recommend(snap, context, 5) if r.source == kt.SOURCE_COOCCURRENCE]
        got = [score for _, score in recommender.recommend(context, 5)]
        # ties may order items differently: the scores, best first, must agree
        np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_numpy_on_covisits_snapshot_scores_as_its_kernel(config, log):
    snap = covisit(ModelConfig(window=config.window, backward=config.backward, distance=config.distance,
                               top_n=5), log).snapshot()  # pruned: rows hold 5 of up to 39 links
    assert (snap.ends - snap.starts).max() == 5
    assert_scores_as_covisit(snap, alt.NumpyServing(snap), log, seed=5)

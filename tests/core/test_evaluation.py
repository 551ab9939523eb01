"""The offline protocol: sessions, cleaning, split, metrics and baselines, by hand and on real data."""

import math
from pathlib import Path

import numpy as np
import pytest

from covisit.core.config import ModelConfig
from covisit.core.datasets import read_online_retail
from covisit.core.evaluation import (
    Session, Split, clean, evaluate, metrics, prediction_tasks, rank_last_item, rank_pop,
    sessions_from_events, temporal_split,
)
from covisit.core.events import Event
from covisit.core.interning import IdMap

DATA = Path(__file__).resolve().parents[2] / "loadtest" / "data" / "online_retail.csv.gz"
DAY = 86400.0


def session(key, items, start=0.0):
    return Session(key, list(items), [start + i for i in range(len(items))], ["view"] * len(items))


def test_sessions_by_id_or_user_gap_in_time_order():
    events = [Event("u", "b", "view", 20), Event("u", "a", "view", 10), Event("u", "c", "view", 5000),
              Event("v", "x", "view", 1, "s1"), Event("w", "y", "view", 9999, "s1")]
    got = [(s.items, s.start) for s in sessions_from_events(events, session_gap=1800)]
    assert got == [(["x", "y"], 1), (["a", "b"], 10), (["c"], 5000)]


def test_clean_drops_repeats_then_iterates_support_and_length():
    # 'r' repeats collapse; 'z' (support 1) goes, which leaves session 3 too short, which
    # drops 'q' below support 2 on the next round.
    sessions = [session("1", "abab"), session("2", "abrr"), session("3", "zq"), session("4", "qab")]
    got = [s.items for s in clean(sessions, min_support=2)]
    assert got == [list("abab"), list("ab"), list("ab")]


def test_temporal_split_cut_catalog_and_unseen_items():
    sessions = [session("old1", "abc", 0), session("old2", "ab", DAY),
                session("new1", "axb", 9 * DAY), session("new2", "xy", 9.5 * DAY)]
    split = temporal_split(sessions, test_days=1.5)
    assert [s.key for s in split.train] == ["old1", "old2"]
    assert [s.items for s in split.test] == [["a", "b"]]  # x unseen; new2 then too short
    assert split.catalog.names() == ["a", "b", "c"]  # by train count, then id
    assert split.stats() == {"train_sessions": 2, "test_sessions": 1, "test_predictions": 1, "items": 3}
    by_fraction = temporal_split(sessions, test_fraction=0.2)
    assert [s.key for s in by_fraction.test] == ["new1"]
    with pytest.raises(ValueError, match="exactly one"):
        temporal_split(sessions)


def test_metrics_by_hand():
    topk = np.full((3, 20), -1, dtype=np.int32)
    topk[0, :3] = [5, 1, 2]  # target 1 at rank 2
    topk[1, :2] = [0, 1]  # target 3 missed
    topk[2, :1] = [3]  # target 3 at rank 1
    m = metrics(topk, np.array([1, 3, 3]), n_items=6)
    assert m["HR@20"] == pytest.approx(2 / 3)
    assert m["MRR@20"] == pytest.approx((1 / 2 + 1) / 3)
    assert m["NDCG@20"] == pytest.approx((1 / math.log2(3) + 1) / 3)
    assert m["P@20"] == pytest.approx(2 / 3 / 20)
    assert m["COV@20"] == pytest.approx(5 / 6)  # 0, 1, 2, 3, 5 shown
    # exposure counts 0,1,1,1,1,2 (item 1 twice): Gini = sum((2i-n-1) x_i) / (n sum x)
    x = np.array([0, 1, 1, 1, 1, 2])
    i = np.arange(1, 7)
    assert m["Gini@20"] == pytest.approx(((2 * i - 7) * x).sum() / (6 * x.sum()))


def test_baselines_by_hand():
    train = [session("1", "abc"), session("2", "abd"), session("3", "ad")]
    split = Split(train, [session("t", "ab")], IdMap(["a", "b", "d", "c"]))
    tasks = prediction_tasks(split, max_context=10)
    assert tasks.last.tolist() == [0] and tasks.target.tolist() == [1]
    assert rank_pop(split, tasks, 3).tolist() == [[0, 1, 2]]
    # a -> b twice, a -> d once; padded with popularity (a itself, then c)
    assert rank_last_item(split, tasks, 4).tolist() == [[1, 2, 0, 3]]


def test_online_retail_split_reproduces_the_protocol():
    report = read_online_retail(DATA)
    sessions = clean(sessions_from_events(report.events, 1800.0))
    split = temporal_split(sessions, test_days=30)
    assert split.stats() == {"train_sessions": 15664, "test_sessions": 2648,
                             "test_predictions": 84584, "items": 3450}


def test_evaluate_ranks_a_learnable_sequence_perfectly():
    # every session walks the same cycle, so the next item is always the most frequent successor
    cycle = "abcdefgh"
    sessions = [session(f"s{i}", cycle[i % 8:] + cycle[: i % 8], start=i * 100.0) for i in range(40)]
    split = temporal_split(clean(sessions, 1), test_fraction=0.25)
    result = evaluate(split, ModelConfig(window=1, distance="none"))
    assert result["models"]["covisit"]["HR@10"] == 1.0
    assert result["models"]["covisit"]["MRR@10"] == 1.0
    assert result["models"]["LAST-ITEM"]["MRR@10"] == 1.0
    assert result["models"]["POP"]["MRR@10"] < 1.0

"""The linear-probe benchmark's pieces: the logistic regression, the anisotropy figure, the table."""
import numpy as np
import pytest

from tests.benchmarks.linear_probe import fit_probe, mean_cosine, probe_lines


def test_the_probe_learns_separable_classes_and_predicts_unseen_rows():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, size=(3, 16))
    labels = rng.integers(0, 3, size=600)
    features = centres[labels] + rng.normal(0, 1, size=(600, 16)) + 40.0  # a large shared offset
    predict = fit_probe(features[:400], labels[:400], num_classes=3, l2=1e-3)
    assert (predict(features[400:]) == labels[400:]).mean() > 0.97


def test_the_probe_does_no_better_than_chance_on_noise():
    rng = np.random.default_rng(1)
    features, labels = rng.normal(size=(900, 8)), rng.integers(0, 3, size=900)
    predict = fit_probe(features[:600], labels[:600], num_classes=3, l2=1e-3)
    assert (predict(features[600:]) == labels[600:]).mean() < 0.45


def test_mean_cosine_is_one_for_a_shared_direction_and_one_over_n_for_orthogonal_rows():
    assert mean_cosine(np.array([[1.0, 2.0], [2.0, 4.0], [0.5, 1.0]])) == pytest.approx(1.0)
    assert mean_cosine(np.eye(4)) == pytest.approx(0.25)  # self-pairs count: 4 of 16 pairs


def test_the_table_gives_each_base_its_difference_from_the_first_in_points():
    rows = [{"probe_test_macro_f1": {2000: 0.50}, "mean_cosine": 0.1, "embed_s": 3.0},
            {"probe_test_macro_f1": {2000: 0.53}, "mean_cosine": 0.4, "embed_s": 2.0}]
    lines = probe_lines(rows, ["minilm", "adapted"])
    assert "F1 @2000 rows" in lines[0]
    assert "+0.00p" in lines[1] and "+3.00p" in lines[2] and "0.400" in lines[2]

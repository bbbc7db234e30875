"""The top-k window (what a served member sees) and its two treatments of the missing mass."""

import math

import pytest
import torch

from chared_flows.decoding.backends.topk import TopKBackend, topk_logits, truncate
from chared_flows.decoding.backends.transformers import TransformersBackend
from chared_flows.errors import ConfigError
from tests.fixtures.tiny import tiny_model


def test_drop_keeps_the_top_k_full_softmax_log_probs_and_renormalises_over_them():
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, 3.0, 0.0])
    out = truncate(logits, 3, rest="drop")
    full = torch.log_softmax(logits.double(), -1).float()
    assert torch.isfinite(out).tolist() == [True, True, False, False, True, False]
    torch.testing.assert_close(out[torch.isfinite(out)], full[[0, 1, 4]])
    want = torch.softmax(logits[[0, 1, 4]], -1)
    torch.testing.assert_close(torch.softmax(out, -1)[[0, 1, 4]], want)


def test_spread_gives_the_missing_mass_evenly_to_the_others():
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, 3.0, 0.0])
    probs = torch.softmax(truncate(logits, 2, rest="spread").double(), -1)
    full = torch.softmax(logits.double(), -1)
    torch.testing.assert_close(probs[[0, 4]], full[[0, 4]])  # the k seen keep their full probability
    rest = probs[[1, 2, 3, 5]]
    torch.testing.assert_close(rest, torch.full((4,), float(1 - full[[0, 4]].sum()) / 4, dtype=torch.float64))


def test_k_at_least_the_rows_is_the_full_distribution():
    logits = torch.randn(50, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.softmax(truncate(logits, 50), -1), torch.softmax(logits, -1))


def test_out_of_range_ids_name_the_likely_cause():
    with pytest.raises(ValueError, match="token id 9 is outside the member's 5 output rows; is the tokenizer the server's"):
        topk_logits([1, 9], [-0.1, -2.0], 5, rest="drop")
    assert topk_logits([], [], 3, rest="drop").tolist() == [-math.inf] * 3
    assert topk_logits([], [], 4).tolist() == pytest.approx([math.log(0.25)] * 4)  # spread: all mass missing


def test_backend_wraps_runners_counters_and_snapshots():
    backend = TopKBackend(TransformersBackend(tiny_model(60, seed=1)), 4, rest="drop")
    runner = backend.new_runner()
    a = runner.next_logits([1, 2, 3])
    snap = runner.snapshot()
    runner.next_logits([1, 2, 7, 8])
    runner.restore(snap)
    assert torch.equal(runner.next_logits([1, 2, 3]), a) and int(torch.isfinite(a).sum()) == 4
    assert runner.forward_passes == 2 and runner.tokens_fed == 5
    assert backend.identity()["kind"] == "topk(transformers)" and backend.identity()["top_k"] == 4


@pytest.mark.parametrize("k, rest, message", [(0, "drop", "top_k is 0"), (True, "drop", "top_k is True"),
                                              (5, "uniform", "rest 'uniform' is not a treatment")])
def test_bad_options_are_refused(k, rest, message):
    with pytest.raises(ConfigError, match=message):
        TopKBackend(TransformersBackend(tiny_model(60, seed=1)), k, rest=rest)

"""Calibration measures what the tree search needs, from real runs of the engine."""

import numpy as np
import pytest

from zoo.decode import calibration
from zoo.decode.drafters import DraftModelStaticTree
from zoo.decode.tree_search import Costs


def test_self_drafting_is_always_accepted_at_rank_0(tiny_model_and_params):
    """The target drafting its own top-k: rank 0 is the target's greedy token (accepted every
    time it is offered), every other rank never; costs are measured for every size and depth."""
    model, params = tiny_model_and_params
    prompts = [[5, 6, 7, 8, 9], [1, 2, 3]]
    cal = calibration.calibrate(
        model, params, lambda template: (DraftModelStaticTree(model, template), params),
        prompts, max_depth=2, fan=2, max_new_tokens=12, sizes=(1, 4), repeats=1)
    np.testing.assert_allclose(np.array(cal.acceptance), [[1, 0], [1, 0]])
    assert sorted(cal.costs.extend) == [1, 4] and min(cal.costs.extend.values()) > 0
    assert len(cal.costs.draft) == 3 and cal.costs.draft[0] == 0
    assert cal.costs.draft[2] > 0  # a draft LM pays forwards per depth


def test_calibrations_are_cached_by_key(tmp_path):
    cal = calibration.Calibration(((0.5, 0.25),), Costs({1: 1e-3, 8: 2e-3}, (0.0, 1e-4)))
    path = tmp_path / calibration.FILENAME
    assert calibration.load(path, "a") is None
    calibration.save(path, "a", cal)
    calibration.save(path, "b", calibration.Calibration(((0.1,),), cal.costs))
    assert calibration.load(path, "a") == cal
    assert calibration.load(path, "b").acceptance == ((0.1,),)


def test_bad_calibration_settings_are_named(tiny_model_and_params):
    model, params = tiny_model_and_params
    with pytest.raises(ValueError, match="max_depth and fan must be >= 1"):
        calibration.calibrate(model, params, None, [[1]], max_depth=0)

"""bench/reachable_point.py: a prediction rescaled through the original and the measured fastest plan."""
import pytest

from reachable_point import corrected


def test_the_correction_passes_through_the_original_and_the_measured_fastest_plan():
    assert corrected(1.0, 3.0, 2.5) == pytest.approx(1.0)          # the original stays itself
    assert corrected(3.0, 3.0, 2.5) == pytest.approx(2.5)          # the fastest plan lands on its measurement
    # in between, the saved fraction of the original's time shrinks by the same factor
    k = (1 - 1 / 2.5) / (1 - 1 / 3.0)
    assert 1 - 1 / corrected(1.5, 3.0, 2.5) == pytest.approx(k * (1 - 1 / 1.5))

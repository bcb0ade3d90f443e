"""The playout schedule's sliding window: its minimum and quantile are numpy's, exactly
enough to be the same playout decisions, for any arrival pattern."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from service.audio.jitter import Schedule, SortedWindow

values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@given(
    st.lists(values, min_size=1, max_size=400),
    st.integers(min_value=1, max_value=60),
    st.sampled_from([0.5, 0.9, 0.95, 0.99]),
)
def test_the_window_keeps_numpys_minimum_and_quantile_as_values_come_and_go(
    stream: list[float], size: int, q: float
) -> None:
    window = SortedWindow(size)
    for i, v in enumerate(stream):
        window.append(v)
        held = np.array(stream[max(0, i + 1 - size) : i + 1])
        assert len(window) == held.size
        assert window.min() == held.min()
        assert window.quantile(q) == np.quantile(held, q)


def test_the_schedule_follows_the_window_and_forgets_it_on_restart() -> None:
    schedule = Schedule(window_s=1.0, quantile=0.95)  # 50 frames
    rng = np.random.default_rng(1)
    late = np.minimum(rng.exponential(0.003, 200), 0.01)  # no two within a burst gap
    arrivals = [100.0 + seq * 0.02 + delay for seq, delay in enumerate(late)]
    for seq, now in enumerate(arrivals):
        schedule.arrived(seq, now)
    transit = np.array([now - seq * 0.02 for seq, now in enumerate(arrivals)])[-50:]
    assert schedule.base == transit.min()
    assert schedule.jitter == np.quantile(transit, 0.95) - transit.min()
    schedule.restart()
    schedule.arrived(1000, 500.0)
    assert schedule.base == 500.0 - 1000 * 0.02
    assert schedule.jitter == 0.0

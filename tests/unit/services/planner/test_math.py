"""The planner's arithmetic: forecasters on series with known next values, replica counts against
hand-computed cases, and the stabiliser's hysteresis on noisy load."""

import math
import random

import pytest

from kvmesh.profile import DecodePoint, EngineProfile, PrefillPoint
from services.planner import forecast
from services.planner.replicas import MAX_UTILISATION, Targets, Traffic, decode_need, prefill_need, waiting_workers
from services.planner.stabilizer import Stabilizer, fit_budget

PROFILE = EngineProfile(
    engine="sim",
    model="m",
    prefill=[
        PrefillPoint(isl=1000, ttft_ms=100, tokens_per_s=10000),
        PrefillPoint(isl=3000, ttft_ms=300, tokens_per_s=10000),
    ],
    decode=[
        DecodePoint(batch=1, context=1000, itl_ms=10),
        DecodePoint(batch=8, context=1000, itl_ms=20),
        DecodePoint(batch=1, context=3000, itl_ms=12),
        DecodePoint(batch=8, context=3000, itl_ms=28),
    ],
)
TRAFFIC = Traffic(requests_per_s=10, isl_mean=1000, isl_p=2000, osl_mean=100, osl_p=200)
TARGETS = Targets(ttft_ms=400, itl_ms=20)


@pytest.mark.parametrize("name", list(forecast.FORECASTERS))
def test_every_forecaster_continues_a_constant_series(name):
    assert forecast.make(name).predict([5.0] * 24) == pytest.approx(5.0)


def test_moving_average_and_constant():
    assert forecast.make("moving-average", window=2).predict([1, 2, 3, 4]) == 3.5
    assert forecast.make("constant").predict([1, 2, 9]) == 9
    assert forecast.make("constant").predict([]) == 0.0


def test_peak_holds_the_busiest_interval_of_its_window():
    burst = [0, 0, 40, 0, 0, 0]
    assert forecast.make("peak", window=4).predict(burst) == 40
    assert forecast.make("peak", window=3).predict(burst) == 0
    assert forecast.make("peak").predict([]) == 0.0
    assert forecast.make("holt-winters", window=3) == forecast.make("holt-winters")  # not windowed


def test_smoothed_peak_halves_a_lone_spike_and_sees_a_burst_in_its_first_interval():
    # 1-s intervals averaged over 2: a burst shows at half its rate at once; a spike of one
    # interval counts half.
    assert forecast.make("peak", window=4, smooth=2).predict([0, 0, 0, 0, 30]) == 15
    assert forecast.make("peak", window=4, smooth=2).predict([0, 0, 40, 40, 0]) == 40
    assert forecast.make("peak", window=2, smooth=2).predict([0, 40, 0, 0]) == 20  # [0, 20, 20, 0]
    assert forecast.make("peak", window=1, smooth=2).predict([0, 40, 0, 0]) == 0
    assert forecast.make("peak", smooth=3).predict([]) == 0.0
    with pytest.raises(ValueError, match="arima"):
        forecast.make("arima", smooth=2)


def test_bursts_smooths_spikes_and_holds_the_usual_burst_through_a_silence():
    # Two bursts, then a silence longer than the window: a peak forgets them, bursts does not.
    series = [0, 2, 2, 0, 0, 6, 6, 0, 0, 0, 0, 0]
    assert forecast.make("peak", window=4).predict(series) == 0
    # Smoothed over 2: [0, 1, 2, 1, 0, 3, 6, 3, 0, ...]; busy values 1, 2, 1, 3, 6, 3.
    assert forecast.Bursts(window=4, quantile=0.5).predict(series) == 2.5
    assert forecast.Bursts(window=4, quantile=1.0).predict(series) == 6
    # Within the window the smoothed peak counts: a lone 2-s spike of 8 asks for 4, not 8.
    assert forecast.Bursts(window=4, quantile=0.5).predict([0, 0, 0, 8]) == 4
    assert forecast.make("bursts", window=3) == forecast.Bursts(window=3)
    assert forecast.make("bursts").predict([]) == 0.0
    assert forecast.make("bursts").predict([0, 0, 0]) == 0.0


def test_holt_winters_follows_a_trend_and_a_season():
    assert forecast.make("holt-winters").predict([2.0 * i for i in range(30)]) == pytest.approx(60.0, abs=0.5)
    season = [10 + 5 * math.sin(2 * math.pi * i / 8) for i in range(48)]
    assert forecast.make("holt-winters", season=8).predict(season) == pytest.approx(10.0, abs=0.5)  # sin(2π·6)=0


def test_arima_follows_a_trend():
    assert forecast.make("arima").predict([3.0 * i + 1 for i in range(40)]) == pytest.approx(121.0, abs=2.0)


def test_unknown_forecaster_is_named():
    with pytest.raises(ValueError, match="prophet"):
        forecast.make("prophet")


def test_profile_interpolates_and_caps_decode_batch():
    assert PROFILE.ttft_ms(2000) == 200
    assert PROFILE.itl_ms(1, 2100) == pytest.approx(11.1)
    assert PROFILE.itl_ms(8, 2100) == pytest.approx(24.4)
    batch, tokens_per_s = PROFILE.decode_capacity(20, 2100)
    assert batch == 5 and tokens_per_s == pytest.approx(5000 / (11.1 + 4 / 7 * 13.3))
    assert PROFILE.decode_capacity(5, 2100) == (0, 0.0)


def test_profile_refuses_a_ragged_decode_grid():
    with pytest.raises(ValueError, match="grid"):
        EngineProfile(engine="sim", model="m", prefill=PROFILE.prefill, decode=PROFILE.decode[:3])


def test_prefill_need_by_hand():
    # 10 req/s × 1000-token prompts on workers of 10,000 tok/s: 0.1 s each, 1 Erlang. ISL p90 2000
    # alone: 200 ms of the 400 ms target, 200 ms (2 services) of slack. 2 workers: Erlang B 0.2,
    # C = 2·0.2 / (2 - 0.8) = 1/3, P(wait > slack) = e^-2 / 3 = 0.045 ≤ 0.1 (1 worker: 100% busy).
    need = prefill_need(TRAFFIC, PROFILE, TARGETS)
    assert need.replicas == 2 and need.feasible
    # Observed TTFT 1.5× the profile's: 1.5 Erlangs, slack 100 ms of 150 ms services. 2 workers:
    # C 0.643, P 0.461; 3 workers: C 0.237, P = 0.237·e^-1 = 0.087 → 3.
    assert prefill_need(TRAFFIC, PROFILE, TARGETS, correction=1.5).replicas == 3
    # Twice the profile's: the p90 prompt alone eats the whole target; then nobody should wait
    # (C ≤ 0.1): 2 Erlangs → C(4) 0.174, C(5) 0.060 → 5.
    corrected = prefill_need(TRAFFIC, PROFILE, TARGETS, correction=2.0)
    assert not corrected.feasible and "cannot be met" in corrected.reason and corrected.replicas == 5


def _wait_beyond(c: int, offered: float, slack_in_services: float) -> float:
    """P(wait > slack) in M/M/c, from the textbook sum (not the recurrence the planner uses)."""
    top = offered**c / math.factorial(c) * c / (c - offered)
    erlang_c = top / (sum(offered**k / math.factorial(k) for k in range(c)) + top)
    return erlang_c * math.exp(-(c - offered) * slack_in_services)


@pytest.mark.parametrize("offered", [0.3, 1.0, 4.2, 17.0, 60.0])
@pytest.mark.parametrize("slack", [0.0, 0.5, 3.0])
def test_waiting_workers_is_the_fewest_that_meet_the_tail(offered, slack):
    c = waiting_workers(offered, slack, 0.1)
    assert offered / c <= MAX_UTILISATION and _wait_beyond(c, offered, slack) <= 0.1
    fewer = c - 1
    assert offered / max(fewer, 1e-9) > MAX_UTILISATION or _wait_beyond(fewer, offered, slack) > 0.1


def test_a_short_burst_of_long_prompts_needs_a_worker_each_not_a_queue_each():
    # Four ~7k-token prompts in 2 s, each taking 980 ms of a 1,000 ms target (a planner_eval case):
    # the per-worker queue model asked for 22 workers; one for each and a spare is what it takes.
    prefill = [PrefillPoint(isl=7000, ttft_ms=980, tokens_per_s=7000 / 0.98),
               PrefillPoint(isl=1, ttft_ms=1, tokens_per_s=1000)]  # fmt: skip
    profile = EngineProfile(engine="sim", model="m", prefill=prefill, decode=PROFILE.decode)
    burst = Traffic(requests_per_s=2, isl_mean=7000, isl_p=7000, osl_mean=10, osl_p=10)
    assert prefill_need(burst, profile, Targets(ttft_ms=1000, itl_ms=60)).replicas == 5


def test_decode_need_by_hand():
    # Context 2000 + 200/2 = 2100; batch 5 meets 20 ms ITL there (18.7 ms) = 267.4 tok/s a worker;
    # 10 req/s × 100 tokens = 1000 tok/s → 3.74 workers.
    need = decode_need(TRAFFIC, PROFILE, TARGETS)
    assert need.replicas == pytest.approx(1000 / (5000 / 18.7), rel=1e-6)
    assert "batch 5" in need.reason
    assert decode_need(Traffic(0, 0, 0, 0, 0), PROFILE, TARGETS).replicas == 0


def test_stabilizer_scales_up_at_once_and_never_flaps_on_noisy_constant_load():
    stabilizer = Stabilizer(down_after=3, cooldown_s=0)
    rng = random.Random(7)
    current, changes = 1, 0
    for step in range(200):
        need = 3.5 + rng.uniform(-0.45, 0.45)  # noise around 3.5 workers
        decided, _ = stabilizer.decide(current, need, now_s=step * 10.0)
        changes += decided != current
        current = decided
    assert current == 4 and changes == 1


def test_stabilizer_scales_down_after_a_sustained_drop_and_the_cooldown():
    stabilizer = Stabilizer(down_after=3, cooldown_s=100)
    assert stabilizer.decide(1, 5.2, now_s=0)[0] == 6
    decisions = [stabilizer.decide(6, need, now_s=t)[0] for t, need in [(10, 2.1), (20, 1.9), (30, 2.0), (40, 2.2)]]
    assert decisions == [6, 6, 6, 6]  # three low intervals by t=30, but the cool-down runs until t=100
    assert stabilizer.decide(6, 2.3, now_s=110) == (3, "need 2.30 below 6 for 3 intervals: scale down")


def test_budget_shrinks_both_pools_in_proportion():
    assert fit_budget(2, 3, 8) == (2, 3, None)
    assert fit_budget(6, 10, 8)[:2] == (3, 5)
    assert fit_budget(9, 1, 4)[:2] == (3, 1)


def test_a_binding_budget_keeps_a_split_one_worker_off_and_moves_one_further_off():
    assert fit_budget(139, 18, 6, current=(4, 2))[:2] == (4, 2)  # in proportion 5+1: one off
    assert fit_budget(9, 15, 6, current=(5, 1))[:2] == (2, 4)  # in proportion 2+4: three off
    assert fit_budget(9, 15, 6, current=(2, 2))[:2] == (2, 4)  # the budget is not used yet
    assert fit_budget(2, 3, 6, current=(4, 2)) == (2, 3, None)  # within the budget: as wanted
    assert fit_budget(1, 4, 3, current=(2, 1))[:2] == (1, 2)  # prefill has a worker to spare: it moves

"""SLO-aware admission's estimator and verdict (server.generation.slo) on a clock the test moves: nothing refused
without data, estimates that follow the measured rates, refusals past the budgets with a Retry-After, the heaviest
tenant shed first, and a request's budget headers that only tighten the server's."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from engine.stats import SchedulerStatsRecorder
from server.generation.fits import LinearFit
from server.generation.slo import Budgets, LoadEstimator, Reason, SloAdmission, Ticket, request_budgets


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run_alone(estimator: LoadEstimator, clock: Clock, prompt: int, prefill_s: float, tokens: int,
              tpot_s: float) -> None:
    """One generation on an otherwise idle engine."""
    ticket = estimator.admitted(prompt, 1, None)
    clock.now += prefill_s
    estimator.first_token(ticket, 0)
    clock.now += tpot_s * (tokens - 1)
    estimator.finished(ticket, tokens)


def run_batch(estimator: LoadEstimator, clock: Clock, batch: int, tokens: int, tpot_s: float) -> None:
    """`batch` generations decoding side by side from their first token to their end."""
    tickets = [estimator.admitted(10, 1, None) for _ in range(batch)]
    clock.now += 0.01
    for ticket in tickets:
        estimator.first_token(ticket, 0)
    clock.now += tpot_s * (tokens - 1)
    for ticket in tickets:
        estimator.finished(ticket, tokens)


def trained(slots: int = 64) -> tuple[LoadEstimator, Clock]:
    """Prefill: 20 ms + 1 ms per token; decode: TPOT 10 ms + 10 ms per sequence in the batch."""
    clock = Clock()
    estimator = LoadEstimator(slots, clock)
    for prompt in (100, 400, 100, 400):
        run_alone(estimator, clock, prompt, 0.02 + prompt / 1000, 2, 0.02)
    for batch in (1, 6, 1, 6):
        run_batch(estimator, clock, batch, 11, 0.01 + 0.01 * batch)
    return estimator, clock


def hold(estimator: LoadEstimator, running: int, waiting: int = 0, prompt: int = 100, *,
         steady: bool = True) -> list[Ticket]:
    """More sequences admitted; `steady`: as if the load had held at its new level for a sequence's life (its
    time-weighted mean is what it is now), not a burst that came this instant."""
    tickets = [estimator.admitted(prompt, 1, None) for _ in range(running + waiting)]
    for ticket in tickets[:running]:
        estimator.first_token(ticket, 0)
    if steady:
        estimator.mean_load = float(estimator.running_seqs + estimator.waiting_seqs)
    return tickets


def test_nothing_is_refused_without_data() -> None:
    estimator = LoadEstimator(8, Clock())
    hold(estimator, running=8, waiting=100)
    slo = SloAdmission(Budgets(ttft_s=0.001, tpot_s=0.001), estimator, fair=False)
    assert estimator.estimate(1000, 1).ttft_s is None and estimator.estimate(1000, 1).tpot_s is None
    assert slo.verdict("a", 1000, 1, {"a": 108}) is None


def test_the_estimate_follows_the_measured_rates() -> None:
    estimator, _ = trained()
    assert estimator.prefill.predict(1000) == pytest.approx(1.02, rel=0.02)
    assert estimator.decode.predict(8) == pytest.approx(0.09, rel=0.02)
    hold(estimator, running=7, waiting=3, prompt=300)
    estimate = estimator.estimate(100, 1)
    # 900 tokens ahead and its own 100; the batch with it: 11 sequences.
    assert estimate.ttft_s == pytest.approx(1.02, rel=0.02)
    assert estimate.tpot_s == pytest.approx(0.12, rel=0.02)


def test_past_the_slots_a_new_sequence_waits_for_one_to_finish() -> None:
    estimator, _ = trained(slots=4)
    hold(estimator, running=4, waiting=3, prompt=0)
    sequence_s = estimator.sequence_s.value
    assert sequence_s is not None
    # 4 running, 3 waiting, itself: 4 over the slots, a slot freeing every sequence_s / 4.
    estimate = estimator.estimate(0, 1)
    assert estimate.ttft_s is not None
    assert estimate.ttft_s - (estimator.prefill.predict(0) or 0) == pytest.approx(4 * sequence_s / 4)


def test_without_spread_only_what_was_measured_counts() -> None:
    fit = LinearFit(min_spread=0.5)
    for _ in range(5):
        fit.add(4, 0.05)
    assert fit.predict(2) == pytest.approx(0.025)  # in proportion, no fixed part: at most what was measured
    assert fit.predict(4) == pytest.approx(0.05)
    assert fit.predict(40) == pytest.approx(0.05)  # at least what was measured at 4, no extrapolation


def test_the_decode_slope_is_trusted_up_to_twice_the_largest_batch_measured() -> None:
    estimator, _ = trained()
    # Measured at 1 and 6 sequences: the slope holds to 12, and no further.
    assert estimator.decode.predict(12) == pytest.approx(0.13, rel=0.02)
    assert estimator.decode.predict(50) == estimator.decode.predict(12)


def test_below_the_budgets_nothing_is_refused_past_them_retry_after() -> None:
    estimator, _ = trained()
    slo = SloAdmission(Budgets(ttft_s=2.0, tpot_s=0.105), estimator, fair=False)
    tickets = hold(estimator, running=7)
    assert slo.verdict("a", 100, 1, {"a": 7}) is None   # batch 8: 90 ms
    tickets += hold(estimator, running=1)
    assert slo.verdict("a", 100, 1, {"a": 8}) is None   # batch 9: 100 ms
    tickets += hold(estimator, running=1)
    refusal = slo.verdict("a", 100, 1, {"a": 9})          # batch 10: 110 ms
    assert refusal is not None and refusal.reason == Reason.TPOT and not refusal.over_share
    assert refusal.retry_after_s >= 1 and "time per output token" in refusal.message()
    # A sequence ends, and the load stays at 8: room again.
    estimator.finished(tickets.pop(), 5)
    hold(estimator, running=0)
    assert slo.verdict("a", 100, 1, {"a": 8}) is None


def test_with_an_admit_fraction_a_mean_estimate_keeps_room_below_the_budget() -> None:
    """The estimate is a mean and the budget holds for each request: admitted up to a fraction of the budget."""
    estimator, _ = trained()
    slo = SloAdmission(Budgets(ttft_s=2.0, tpot_s=0.105), estimator, fair=False, admit_fraction=0.8)
    hold(estimator, running=6)
    assert slo.verdict("a", 100, 1, {"a": 6}) is None      # batch 7: 80 ms, under 84 ms (80 % of 105)
    hold(estimator, running=1)
    refusal = slo.verdict("a", 100, 1, {"a": 7})           # batch 8: 90 ms, under the budget, over 80 % of it
    assert refusal is not None and refusal.reason == Reason.TPOT and refusal.budget_s == 0.105
    assert "budget 105 ms, admitting up to 80% of it" in refusal.message()


def test_a_burst_is_weighed_over_the_life_of_the_new_sequence() -> None:
    """A Poisson burst on a server below capacity: the sequences admitted now finish during the new one's life and
    arrivals at the recent rate replace them, so its TPOT is predicted at half the burst and half the load's mean
    (the knee search refused 18 % at 1 request/s that way where vllm serve met the SLO); a load that holds is
    predicted at its full size."""
    estimator, clock = trained()
    slo = SloAdmission(Budgets(tpot_s=0.105), estimator, fair=False)
    hold(estimator, running=4, steady=False)
    clock.now += 10  # four sequences decode for a while: the mean load is 4
    hold(estimator, running=0, waiting=6, steady=False)
    estimate = estimator.estimate(100, 1).tpot_s
    assert estimate == pytest.approx(0.09, rel=0.02)  # (10 + 4) / 2 + itself: 8 sequences, not 11 (120 ms)
    assert slo.verdict("a", 100, 1, {"a": 10}) is None
    clock.now += 2  # the burst holds for a sequence's life (about 0.2 s here): the mean is 10
    refusal = slo.verdict("a", 100, 1, {"a": 10})
    assert refusal is not None and refusal.estimate_s == pytest.approx(0.12, rel=0.02)


def test_a_long_queue_is_refused_on_its_ttft() -> None:
    estimator, _ = trained()
    slo = SloAdmission(Budgets(ttft_s=1.0), estimator, fair=False)
    hold(estimator, running=2, waiting=5, prompt=100)
    assert slo.verdict("a", 100, 1, {"a": 7}) is None     # 600 tokens: 620 ms
    hold(estimator, running=0, waiting=5, prompt=100)
    refusal = slo.verdict("a", 100, 1, {"a": 12})          # 1100 tokens: 1.12 s
    assert refusal is not None and refusal.reason == Reason.TTFT
    assert refusal.estimate_s == pytest.approx(1.12, rel=0.02) and refusal.retry_after_s == 1


def test_the_heaviest_tenant_is_shed_first() -> None:
    """Past the TPOT budget, the heavy tenant (8 of 9 sequences) is refused as over its share, while a light
    tenant's request is counted against the load at its own level and gets in; with fair share off, the light
    tenant is refused as well, as the server's overload."""
    estimator, _ = trained()
    hold(estimator, running=9)
    held = {"heavy": 8, "light": 1}
    fair = SloAdmission(Budgets(tpot_s=0.1), estimator, fair=True)
    heavy = fair.verdict("heavy", 100, 1, held)
    assert heavy is not None and heavy.reason == Reason.TENANT_SHARE and "even share" in heavy.message()
    assert fair.verdict("light", 100, 1, held) is None
    assert fair.verdict("newcomer", 100, 1, held) is None
    unfair = SloAdmission(Budgets(tpot_s=0.1), estimator, fair=False)
    light = unfair.verdict("light", 100, 1, held)
    assert light is not None and light.reason == Reason.TPOT


def test_a_tenant_within_its_share_of_the_batch_is_admitted_past_the_line() -> None:
    """Two tenants, the batch past the admission line (80 % of a 105-ms budget: 7 sequences at 10 ms + 10 ms per
    sequence; the budget itself allows 9): a light tenant holding no more than half of the budget's 9 is admitted
    although the estimate is past the line (refused before), while the flood is refused as over its share; past
    half of the batch the light tenant is refused as well, and one tenant alone meets the line as before."""
    estimator, _ = trained()
    assert estimator.batch_within(0.105) == 9 and estimator.batch_within(0.005) == 0
    hold(estimator, running=9)
    fair = SloAdmission(Budgets(tpot_s=0.105), estimator, fair=True, admit_fraction=0.8)
    assert fair.verdict("light", 100, 1, {"flood": 5, "light": 3}) is None  # 4 of 9: within half
    flood = fair.verdict("flood", 100, 1, {"flood": 5, "light": 3})
    assert flood is not None and flood.reason == Reason.TENANT_SHARE
    light = fair.verdict("light", 100, 1, {"flood": 5, "light": 4})  # 5 of 9: past half
    assert light is not None and light.reason == Reason.TPOT
    alone = fair.verdict("light", 100, 1, {"light": 9})
    assert alone is not None and alone.reason == Reason.TPOT
    unfair = SloAdmission(Budgets(tpot_s=0.105), estimator, fair=False, admit_fraction=0.8)
    assert unfair.verdict("light", 100, 1, {"flood": 5, "light": 3}) is not None


def test_a_request_may_tighten_the_budgets_never_loosen_them() -> None:
    server = Budgets(ttft_s=2.0, tpot_s=0.1)
    assert server.merged(Budgets(ttft_s=0.5)) == Budgets(0.5, 0.1)
    assert server.merged(Budgets(ttft_s=10.0, tpot_s=1.0)) == server
    assert Budgets().merged(Budgets(tpot_s=0.05)) == Budgets(None, 0.05)
    estimator, _ = trained()
    hold(estimator, running=0, waiting=5, prompt=100)
    slo = SloAdmission(Budgets(), estimator, fair=False)
    assert slo.verdict("a", 100, 1, {"a": 5}) is None
    token = request_budgets.set(Budgets(ttft_s=0.3))
    try:
        refusal = slo.verdict("a", 100, 1, {"a": 5})
    finally:
        request_budgets.reset(token)
    assert refusal is not None and refusal.reason == Reason.TTFT and refusal.budget_s == 0.3


def test_an_idle_replica_refuses_nothing_so_its_estimate_can_recover() -> None:
    """A first prefill slowed by a busy machine (1 s where 50 ms is usual) put CI's estimate over a 1-s TTFT budget
    with nothing admitted, and the idle replica refused every retry for a minute: a refusal there waits for no one
    and protects no stream, and it starved the estimate of the samples that would have corrected it. Once something
    is admitted (ahead of the request, or decoding beside it), the same estimate refuses again."""
    clock = Clock()
    estimator = LoadEstimator(2, clock)
    run_alone(estimator, clock, 100, 1.0, 48, 0.2)  # TTFT 1 s; TPOT 200 ms alone
    slo = SloAdmission(Budgets(ttft_s=1.0, tpot_s=0.15), estimator, fair=False, admit_fraction=0.8)
    estimate = estimator.estimate(100, 1)
    assert estimate.ttft_s == pytest.approx(1.0) and estimate.tpot_s == pytest.approx(0.2)
    assert slo.verdict("a", 100, 1, {}) is None
    assert slo.verdict("a", 100, 4, {}) is None  # more choices than slots: still no one else's
    waiting = hold(estimator, running=0, waiting=1)
    refusal = slo.verdict("a", 100, 1, {"a": 1})
    assert refusal is not None and refusal.reason == Reason.TTFT
    estimator.first_token(waiting[0], 0)  # it decodes, a slot is free: a new one would share its steps
    assert slo.verdict("a", 100, 1, {"a": 1}) is not None


def test_a_cold_first_prefill_counts_only_until_the_next() -> None:
    """CI's goodput server (two slots, TTFT budget 1 s, admitting to 80 %): its first request after start took
    2.2 s, the next 1 s, and with every prompt the same size the fit's mean of the two refused the second of a
    pair below capacity. The first sample stands alone (better than nothing), and only until a second comes."""
    clock = Clock()
    estimator = LoadEstimator(2, clock)
    slo = SloAdmission(Budgets(ttft_s=1.0), estimator, fair=False, admit_fraction=0.8)
    run_alone(estimator, clock, 30, 2.0, 48, 0.02)  # the engine's first pass: one-time costs
    assert estimator.prefill.predict(30) == pytest.approx(2.0)
    run_alone(estimator, clock, 30, 0.06, 48, 0.02)
    assert estimator.prefill.predict(30) == pytest.approx(0.06)
    hold(estimator, running=0, waiting=1, prompt=30)
    assert slo.verdict("a", 30, 1, {"a": 1}) is None  # the second of a pair on two slots


def test_only_the_first_sample_of_a_cold_fit_is_left_out() -> None:
    fit = LinearFit(min_spread=0.5, cold_first=True)
    fit.add(4, 3.0)
    assert fit.predict(4) == pytest.approx(3.0)
    for y in (0.05, 0.07, 0.06):
        fit.add(4, y)
    assert fit.predict(4) == pytest.approx(0.06, rel=0.02)  # the later ones all count
    warm = LinearFit(min_spread=0.5)
    warm.add(4, 3.0)
    warm.add(4, 0.05)
    assert warm.predict(4) == pytest.approx(1.54, rel=0.02)  # without it, the cold sample carries the mean


def test_a_generation_that_ends_before_its_first_token_leaves_no_load() -> None:
    estimator, _ = trained()
    ticket = estimator.admitted(500, 2, None)
    assert (estimator.waiting_seqs, estimator.waiting_tokens) == (2, 500)
    estimator.finished(ticket, 0)
    assert (estimator.waiting_seqs, estimator.waiting_tokens, estimator.running_seqs) == (0, 0, 0)


def steps_of(recorder: SchedulerStatsRecorder, clock: Clock, batch: int, seconds_per_token: list[float],
             prefilled: frozenset[int] = frozenset()) -> None:
    """Engine steps as vLLM's iteration stats report them; the steps at the indexes in `prefilled` also gave some
    sequence its first token."""
    for index, value in enumerate(seconds_per_token):
        clock.now += value
        first_tokens = [0.5] if index in prefilled else []
        recorder.decode_step(SimpleNamespace(inter_token_latencies_iter=[value] * batch,
                                             time_to_first_tokens_iter=first_tokens))


def test_engine_steps_feed_the_decode_fit_before_any_sequence_finishes() -> None:
    """vLLM's iteration stats (each step's inter-token latencies) reach the estimate as they come, a window of
    steps at a time: under a flood, the running streams' TPOT refuses the next request before any of them has
    finished; one slow step is averaged with its window, as a reply's TPOT is."""
    clock = Clock()
    recorder, estimator = SchedulerStatsRecorder(), LoadEstimator(max_num_seqs=64, clock=clock)
    recorder.decode_observer = estimator.decode_step
    slo = SloAdmission(Budgets(tpot_s=0.15), estimator, fair=False, admit_fraction=0.8)
    hold(estimator, running=3)

    recorder.decode_step(SimpleNamespace(inter_token_latencies_iter=[]))  # a step of first tokens only
    assert estimator.decode.predict(4) is None and slo.verdict("a", 100, 1, {"a": 3}) is None
    steps_of(recorder, clock, 3, [0.05] * 19 + [0.4])  # a second of 50-ms steps, one of them 400 ms: a mean of 67.5 ms
    assert estimator.estimate(100, 1).tpot_s == pytest.approx(0.0675)
    assert slo.verdict("a", 100, 1, {"a": 3}) is None
    steps_of(recorder, clock, 3, [0.2] * 6)  # the engine slows: within the next window the estimate follows
    assert estimator.decode.samples == pytest.approx(1.98)
    refusal = slo.verdict("a", 100, 1, {"a": 3})
    assert refusal is not None and refusal.reason == Reason.TPOT


def test_prefills_that_come_with_a_larger_batch_do_not_steepen_the_decode_fit() -> None:
    """A Poisson burst brings prefill steps and a larger batch at once. Had each window's mean step been the sample
    (CI's goodput run at 0.7x the knee refused 2 of 52 on TPOT that way), the slow steps would be read as the cost
    of the batch and extrapolated; the decode-only steps measure the batch, and the prefills' share of the time is
    a factor on top."""
    clock = Clock()
    recorder, estimator = SchedulerStatsRecorder(), LoadEstimator(max_num_seqs=64, clock=clock)
    recorder.decode_observer = estimator.decode_step
    slo = SloAdmission(Budgets(tpot_s=0.15), estimator, fair=False, admit_fraction=0.8)
    for _ in range(5):  # quiet seconds at a batch of 2: 40-ms steps
        steps_of(recorder, clock, 2, [0.04] * 25)
    for _ in range(5):  # bursts at a batch of 10: 48-ms decode steps, and two 300-ms steps that also prefilled
        steps_of(recorder, clock, 10, [0.048] * 15 + [0.3] * 2, prefilled=frozenset({3, 9}))
    hold(estimator, running=15)
    # Decoding costs 1 ms per sequence (54 ms at 16): the slow steps are not read as the batch's cost.
    assert estimator.decode.predict(16) == pytest.approx(0.054, abs=0.001)
    # The prefills made those seconds' steps 1.6x the decode-only ones; the factor follows them (1.36 after 5 of 10).
    estimate = estimator.estimate(100, 1).tpot_s
    assert estimate is not None and 0.065 < estimate < 0.075
    assert slo.verdict("a", 100, 1, {"a": 15}) is None


def test_the_prefill_factor_weighs_steps_not_windows() -> None:
    """A stream lives through steps: a window of 17 decodes of 62.5 ms and one of 3 decodes and an 875-ms prefill
    took 1.67x what as many decode-only steps would have (the older window decayed), not the 2.6x a mean of the
    two windows' ratios (1 and 4.25) would say."""
    clock = Clock()
    recorder, estimator = SchedulerStatsRecorder(), LoadEstimator(max_num_seqs=64, clock=clock)
    recorder.decode_observer = estimator.decode_step
    steps_of(recorder, clock, 4, [0.0625] * 16)
    steps_of(recorder, clock, 4, [0.0625, 0.0625, 0.0625, 0.875, 0.0625], prefilled=frozenset({3}))
    expected = (0.9 * 17 * 0.0625 + 1.0625) / (0.9 * 17 * 0.0625 + 4 * 0.0625)
    assert estimator.prefill_factor == pytest.approx(expected) and 1.66 < expected < 1.68

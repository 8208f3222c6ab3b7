"""SLO-aware admission: from rates measured on this replica's own generations, estimate whether a new one would get
its first token within its time-to-first-token budget and keep the running streams within the time-per-output-token
budget; what would not is refused before the engine sees it.

The estimate (`LoadEstimator`), fed by the generator's tallies at three moments of a generation (admitted, first
token, finished; O(1) each, nothing per token):
- sequences waiting for their first token (and their prompt tokens) and sequences decoding, counted here;
- prefill: the engine's busy time (while some admitted sequence waits for its first token and a sequence slot is
  free) against the prompt tokens that got their first token in it, fitted as time = a + b x tokens over recent
  windows, so a request's wait is the fit at (prompt tokens ahead of it + its own). The first window after start
  counts only until the next one: it carries the engine's one-time costs (on a busy CI machine a first request
  took 2.2 s and the next 1 s, and the fit's mean, with no spread yet, refused the second of a pair on two slots);
- slots: past `max_num_seqs`, a new sequence also waits for running ones to finish: sequences over the slots x
  (mean decode time of a sequence) / slots, Little's law;
- decode: the engine steps' time per output token against the sequences they decoded (vLLM's iteration stats, as
  they come), fitted as step = c + d x batch on the steps that only decoded, and the time the steps that also
  prefilled add to a stream's TPOT as a factor over them; predicted at the batch the new one will see on average
  over its life: half the sequences admitted now (they finish during it) and half the load's time-weighted mean
  over a sequence's life (arrivals at the recent rate replace them), so that a Poisson burst below capacity is
  not read as the load to come (at the knee that refused what vllm serve served within the SLO). Until steps
  come (an engine that reports none), each finished sequence's TPOT against the mean number decoding beside it
  (the time integral of the running count) feeds the fit instead.
Without data (a cold start, or no spread yet to fit a slope) the estimate is no more than what was measured, and
nothing is refused on what was not measured: no false refusal below capacity. Nor does an idle replica refuse: with
nothing admitted a request waits for no one and slows no one, and a replica that refused then would never measure
again the rates that made it refuse (a first prefill slowed by a busy machine kept CI's idle test server refusing
every retry for a minute); once something is admitted, its progress brings the samples that correct the estimate."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, replace
from enum import StrEnum

from server.generation.fits import Ewma, LinearFit

# The decode fit's slope is trusted up to this multiple of the largest batch measured: a steeper guess from small
# batches must not refuse the larger ones it never saw (prefill time grows with tokens as it was measured to).
DECODE_REACH = 2.0
# A prefill sample spans at least this much busy time (a batch's first tokens arrive together).
PREFILL_WINDOW_S = 0.05
# Engine steps are averaged over this long into one decode sample (see LoadEstimator.decode_step).
DECODE_WINDOW_S = 1.0
# Weight of the past in the prefill factor, per window (the last ~10 s count).
PREFILL_FACTOR_DECAY = 0.9
# Samples whose x spread (standard deviation) is under this give no slope: only what was measured is trusted.
MIN_SPREAD = {"tokens": 16.0, "batch": 0.5}
MIN_RETRY_AFTER_S = 1
# vLLM's largest default max_num_seqs (on large GPUs; 256 elsewhere), for an engine whose profile does not say: more
# slots than real only makes the estimated wait for a slot shorter (toward admitting).
DEFAULT_ENGINE_SLOTS = 1024
# The load's mean is taken over a sequence's life (its decode time, measured); before one has finished, over this.
DEFAULT_SEQUENCE_S = 10.0
# The openai SDK honours Retry-After up to 60 s; past the estimate the client should try elsewhere anyway.
MAX_RETRY_AFTER_S = 30


class Reason(StrEnum):
    """Why a generation was refused (a metric label)."""

    TTFT = "ttft"
    TPOT = "tpot"
    TENANT_SHARE = "tenant_share"


@dataclass(frozen=True, slots=True)
class Budgets:
    """Seconds to the first token and per output token; None: no budget."""

    ttft_s: float | None = None
    tpot_s: float | None = None

    @property
    def any(self) -> bool:
        return self.ttft_s is not None or self.tpot_s is not None

    def merged(self, request: Budgets | None) -> Budgets:
        """A request's own budgets (its headers) over the server's: each may tighten the server's, never loosen it
        (the server's TTFT budget is its promise to every caller, its TPOT budget protects the running streams)."""
        if request is None:
            return self
        return Budgets(tighter(self.ttft_s, request.ttft_s), tighter(self.tpot_s, request.tpot_s))


def tighter(server: float | None, request: float | None) -> float | None:
    return min((b for b in (server, request) if b is not None), default=None)


# The budgets the current HTTP request asked for (server.middleware.slo_headers sets it for the request's duration).
request_budgets: ContextVar[Budgets | None] = ContextVar("request_budgets", default=None)


@dataclass(slots=True)
class Ticket:
    """One admitted generation, as the estimator follows it."""

    prompt_tokens: int
    choices: int
    admitted_at: float
    estimate_s: float | None
    first_at: float | None = None
    batch_area_at_first: float = 0.0


@dataclass(frozen=True, slots=True)
class Estimate:
    """None: not known (no data). `beside`: the sequences admitted that the new one would wait behind or decode
    beside (0: the replica is idle for it)."""

    ttft_s: float | None
    tpot_s: float | None
    retry_after_s: int
    beside: int = 1


@dataclass(frozen=True, slots=True)
class Refusal:
    """`budget`: the one that would be missed (TTFT or TPOT); `over_share`: the tenant holds more than an even share
    of what is admitted (fair share on), so its own load is what to shed."""

    budget: Reason
    estimate_s: float
    budget_s: float
    retry_after_s: int
    over_share: bool = False
    admit_fraction: float = 1.0

    @property
    def reason(self) -> Reason:
        return Reason.TENANT_SHARE if self.over_share else self.budget

    def message(self) -> str:
        what = ("time to the first token" if self.budget == Reason.TTFT
                else "time per output token of the running streams")
        whose = ("; you hold more than an even share of this server's streams" if self.over_share else "")
        room = (f", admitting up to {self.admit_fraction:.0%} of it" if self.admit_fraction < 1 else "")
        return (f"the server cannot serve this request within its latency budget now (estimated {what} "
                f"{self.estimate_s * 1000:.0f} ms, budget {self.budget_s * 1000:.0f} ms{room}){whose}; retry in "
                f"{self.retry_after_s} s" + ("" if self.over_share else " or on another replica"))


def retry_after(seconds: float) -> int:
    return min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, math.ceil(seconds)))


class LoadEstimator:
    """The load on this replica and the rates measured on it (see the module's docstring)."""

    def __init__(self, max_num_seqs: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_num_seqs = max(1, max_num_seqs)
        self.clock = clock
        self.waiting_seqs = 0
        self.waiting_tokens = 0
        self.running_seqs = 0
        self.prefill = LinearFit(MIN_SPREAD["tokens"], cold_first=True)
        self.decode = LinearFit(MIN_SPREAD["batch"], reach=DECODE_REACH)
        self.sequence_s = Ewma()
        self._last = clock()
        self._batch_area = 0.0   # the time integral of running_seqs
        self._busy_s = 0.0       # prefill-busy time in the current window
        self._prefilled = 0      # prompt tokens that got their first token in it
        self._window_start = self._last  # the first engine step of the decode sample being made
        self._window_steps: list[float] = []  # every step's time per token in the window
        self._window_decodes: list[tuple[int, float]] = []  # the steps that only decoded: (batch, time per token)
        # What prefills add to the steps: their time over what as many decode-only steps take, summed over windows.
        self._all_steps_s = self._as_decode_s = 0.0
        self.steps_seen = False
        self.mean_load: float | None = None  # sequences admitted (waiting and running), time-weighted (see estimate)

    def _advance(self) -> float:
        now = self.clock()
        elapsed = max(0.0, now - self._last)
        self._batch_area += self.running_seqs * elapsed
        if elapsed > 0:
            load = self.running_seqs + self.waiting_seqs
            if self.mean_load is None:
                self.mean_load = float(load)
            else:
                life = self.sequence_s.value or DEFAULT_SEQUENCE_S
                self.mean_load += (1 - math.exp(-elapsed / life)) * (load - self.mean_load)
        if self.waiting_seqs and self.running_seqs < self.max_num_seqs:
            self._busy_s += elapsed
        self._last = now
        return now

    def admitted(self, prompt_tokens: int, choices: int, estimate_s: float | None) -> Ticket:
        now = self._advance()
        self.waiting_seqs += choices
        self.waiting_tokens += prompt_tokens
        return Ticket(prompt_tokens, choices, now, estimate_s)

    def first_token(self, ticket: Ticket, cached_tokens: int | None) -> float:
        """Returns the time to the first token since admission."""
        now = self._advance()
        self.waiting_seqs -= ticket.choices
        self.waiting_tokens -= ticket.prompt_tokens
        self.running_seqs += ticket.choices
        ticket.first_at, ticket.batch_area_at_first = now, self._batch_area
        self._prefilled += max(0, ticket.prompt_tokens - (cached_tokens or 0))
        if self._busy_s >= PREFILL_WINDOW_S:
            self.prefill.add(self._prefilled, self._busy_s)
            self._busy_s, self._prefilled = 0.0, 0
        return now - ticket.admitted_at

    def finished(self, ticket: Ticket, completion_tokens: int) -> None:
        now = self._advance()
        if ticket.first_at is None:  # ended before its first token (refused by the engine, client gone)
            self.waiting_seqs -= ticket.choices
            self.waiting_tokens -= ticket.prompt_tokens
            return
        self.running_seqs -= ticket.choices
        decode_s = now - ticket.first_at
        per_sequence = completion_tokens / ticket.choices
        if decode_s <= 0:
            return
        self.sequence_s.add(decode_s)
        if per_sequence >= 2 and not self.steps_seen:
            batch = (self._batch_area - ticket.batch_area_at_first) / decode_s
            self.decode.add(max(1.0, batch), decode_s / (per_sequence - 1))

    def decode_step(self, sequences: int, seconds_per_token: float, prefilled: bool) -> None:
        """One engine step's time per output token at the batch that saw it (engine.stats); `prefilled`: the step
        also ran (the end of) a prefill. The steps of each DECODE_WINDOW_S make one sample, and a window follows the
        engine within a second, not a reply later. Its decode-only steps' median against their mean batch feeds the
        fit: a prefill's step is no measure of the batch, and a Poisson burst brings prefills and a larger batch
        together, which made the fit steeper than decoding is (false refusals below capacity). Its steps' time over
        as many steps at that median is what the prefills added to every stream's TPOT (a reply's TPOT averages over
        all its steps), kept as a factor: at a given rate of prefill work that share of the engine's time holds
        whatever the batch."""
        now = self.clock()
        if not self._window_steps:
            self._window_start = now  # a window starts at its first step: idle time is no part of it
        self._window_steps.append(seconds_per_token)
        if not prefilled:
            self._window_decodes.append((max(1, sequences), seconds_per_token))
        if now - self._window_start >= DECODE_WINDOW_S:
            self._close_window()

    def _close_window(self) -> None:
        if self._window_decodes:
            batch = sum(b for b, _ in self._window_decodes) / len(self._window_decodes)
            typical = statistics.median(t for _, t in self._window_decodes)
            self.decode.add(batch, typical)
            self.steps_seen = True
            d = PREFILL_FACTOR_DECAY
            self._all_steps_s = d * self._all_steps_s + sum(self._window_steps)
            self._as_decode_s = d * self._as_decode_s + typical * len(self._window_steps)
        self._window_steps, self._window_decodes = [], []

    @property
    def prefill_factor(self) -> float:
        """The steps' time over what they would take decoding alone: a sum over steps, not a mean over windows, as a
        stream lives through steps (a window with a long prefill has few steps, and a mean of the windows' ratios
        counted it as often as a window of twenty decodes: 1.65 against the 1.45 a stream saw)."""
        return max(1.0, self._all_steps_s / self._as_decode_s) if self._as_decode_s > 0 else 1.0

    def batch_within(self, tpot_s: float) -> int | None:
        """The largest batch whose predicted TPOT is within `tpot_s` (0: not even one); None without a decode fit."""
        if self.decode.predict(1) is None:
            return None
        factor = self.prefill_factor
        low, high = 0, self.max_num_seqs  # the prediction grows with the batch: bisect for the last one within
        while low < high:
            middle = (low + high + 1) // 2
            if (self.decode.predict(middle) or 0.0) * factor <= tpot_s:
                low = middle
            else:
                high = middle - 1
        return low

    def estimate(self, prompt_tokens: int, choices: int, *, excluded: int = 0) -> Estimate:
        """The TTFT of a new generation and the TPOT of the batch with it. `excluded`: sequences left out of the
        load ahead of it (fair share: a heavier tenant's excess, scheduled after it), waiting ones first."""
        self._advance()
        waiting_out = min(excluded, self.waiting_seqs)
        waiting = self.waiting_seqs - waiting_out
        tokens = self.waiting_tokens * waiting / self.waiting_seqs if self.waiting_seqs else 0.0
        running = max(0, self.running_seqs - (excluded - waiting_out))
        over = running + waiting + choices - self.max_num_seqs
        per_slot = self.sequence_s.value
        slot_wait = over * per_slot / self.max_num_seqs if over > 0 and per_slot is not None else 0.0
        prefill = self.prefill.predict(tokens + prompt_tokens)
        ttft = None if prefill is None and slot_wait == 0 else (prefill or 0.0) + slot_wait
        load = running + waiting
        total = self.running_seqs + self.waiting_seqs
        mean = load if self.mean_load is None else self.mean_load * (load / total if total else 1.0)
        step = self.decode.predict(min((load + mean) / 2 + choices, self.max_num_seqs))
        tpot = None if step is None else step * self.prefill_factor
        # Room comes when a sequence finishes: every (sequence time / sequences running) on average.
        turnover = per_slot / max(1, running) if per_slot is not None else 0.0
        return Estimate(ttft, tpot, retry_after(max(slot_wait, turnover)), beside=load)


class SloAdmission:
    """The server's budgets, a request's own, and the verdict on a new generation."""

    def __init__(self, budgets: Budgets, estimator: LoadEstimator, *, fair: bool,
                 admit_fraction: float = 1.0) -> None:
        """`admit_fraction`: admit while the estimate is at most this fraction of a budget (settings.py says why
        the server runs below 1)."""
        self.budgets = budgets
        self.estimator = estimator
        self.fair = fair
        self.admit_fraction = admit_fraction

    def verdict(self, tenant: str, prompt_tokens: int, choices: int, held: Mapping[str, int]) -> Refusal | None:
        """None to admit. `held`: the sequences each tenant has admitted. With fair share, a tenant's request counts
        the others' load only up to its own (theirs past that is scheduled after it), and a refused tenant holding
        more than an even share is refused as over its share (the heaviest tenant's excess is shed first)."""
        budgets = self.budgets.merged(request_budgets.get())
        if not budgets.any:
            return None
        excluded = 0
        if self.fair:
            level = held.get(tenant, 0) + choices
            excluded = sum(max(0, count - level) for other, count in held.items() if other != tenant)
        estimate = self.estimator.estimate(prompt_tokens, choices, excluded=excluded)
        if estimate.beside == 0:
            return None
        refusal = None
        fraction = self.admit_fraction
        if budgets.ttft_s is not None and estimate.ttft_s is not None and estimate.ttft_s > budgets.ttft_s * fraction:
            refusal = Refusal(Reason.TTFT, estimate.ttft_s, budgets.ttft_s,
                              retry_after(max(estimate.retry_after_s, estimate.ttft_s - budgets.ttft_s * fraction)),
                              admit_fraction=fraction)
        elif budgets.tpot_s is not None and estimate.tpot_s is not None and estimate.tpot_s > budgets.tpot_s * fraction:
            refusal = Refusal(Reason.TPOT, estimate.tpot_s, budgets.tpot_s, estimate.retry_after_s,
                              admit_fraction=fraction)
        if (refusal is not None and refusal.budget == Reason.TPOT and self.fair and budgets.tpot_s is not None
                and self.within_batch_share(tenant, choices, held, budgets.tpot_s)):
            return None
        if refusal is not None and self.fair and self.over_share(tenant, choices, held):
            refusal = replace(refusal, over_share=True)
        return refusal

    def within_batch_share(self, tenant: str, choices: int, held: Mapping[str, int], tpot_s: float) -> bool:
        """Whether the tenant, with this request, holds no more than an even share (over the tenants holding some)
        of the batch that the TPOT budget `tpot_s` allows (the budget itself: the admit fraction is a margin for
        one estimate's error, and an even share must be what a tenant can count on). Such a request is admitted
        past the admission line: the tenants over their share are refused until the batch is back under it, and
        the even shares add up to the budget's batch, so the batch returns below it as their streams end. Measured
        against the line alone, a tenant at half the knee beside a flood (its even share) was refused a third of
        the time: the flood held as many sequences, and two of those shares were past 80 % of the budget."""
        tenants = sum(1 for other, count in held.items() if count > 0 and other != tenant) + 1
        if tenants < 2:
            return False
        batch = self.estimator.batch_within(tpot_s)
        return batch is not None and (held.get(tenant, 0) + choices) * tenants <= batch

    @staticmethod
    def over_share(tenant: str, choices: int, held: Mapping[str, int]) -> bool:
        tenants = len(held) + (tenant not in held)
        total = sum(held.values()) + choices
        return tenants > 1 and (held.get(tenant, 0) + choices) * tenants > total

    def admitted(self, prompt_tokens: int, choices: int) -> Ticket:
        """Start following an admitted generation; its estimated TTFT (the whole load ahead) is kept to be set
        against the one observed."""
        estimate = self.estimator.estimate(prompt_tokens, choices).ttft_s
        return self.estimator.admitted(prompt_tokens, choices, estimate)

"""vLLM-v1-style scheduling: no prefill or decode phase. Each step every request's computed tokens
catch up with its tokens under one token budget, running requests first (oldest first), then waiting
ones in arrival order. When blocks run out the newest running request is preempted (its blocks freed,
recomputed later from the front of the queue), so the oldest request always makes progress.

The scheduler owns the token accounting too (as vLLM v1's does): after a step it advances each sequence's
computed tokens, appends the sampled tokens, ends sequences on a stop token, EOS, max_tokens or
max_model_len, and frees their blocks. Stop strings need the text, which only the engine has: it reports
a hit with finish()."""

import time
from collections import deque
from dataclasses import dataclass

from service.engine.block_manager import BlockManager
from service.engine.sampler import SamplerOutput
from service.engine.sequence import Sequence, Status


@dataclass(slots=True)
class ScheduledSeq:
    seq: Sequence
    num_new_tokens: int  # tokens to compute this step, starting at seq.num_computed_tokens

    @property
    def samples(self) -> bool:
        """Whether this step reaches the end of the sequence's tokens, so a new token is sampled."""
        return self.seq.num_computed_tokens + self.num_new_tokens == self.seq.num_tokens


@dataclass(slots=True)
class SampledToken:
    """One token that update_from_output appended to seq; finish_reason is set when it ended seq."""

    seq: Sequence
    token: int
    logprobs: list | None
    finish_reason: str | None


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 max_model_len: int, eos_token_ids: tuple[int, ...]):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.eos_token_ids = eos_token_ids
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Take seq out of the queues, give back its blocks and record why it ended ("stop", "length",
        "abort" or "error"). On a sequence already finished only the reason changes: a stop string that the
        last token completed wins over "length", as in vLLM."""
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
        elif seq.status is Status.WAITING:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.status = Status.FINISHED
        seq.finish_reason = reason

    def update_from_output(self, scheduled: list[ScheduledSeq], sampling: list[ScheduledSeq],
                           sampled: SamplerOutput) -> list[SampledToken]:
        """After the runner ran `scheduled`: their new tokens are computed; `sampling` (the ones that reached
        their end, in the runner's order) get sampled's tokens. Returns each sampled token, and whether and why
        it ended its sequence."""
        for s in scheduled:
            s.seq.num_computed_tokens += s.num_new_tokens
        now = time.monotonic()
        out = []
        for s, token, lps in zip(sampling, sampled.token_ids, sampled.logprobs):
            seq = s.seq
            seq.output_token_ids.append(token)
            if lps is not None:
                seq.output_logprobs.append(lps)
            if seq.first_token_time is None:
                seq.first_token_time = now
            reason = self._stop_reason(seq, token)
            if reason:
                self.finish(seq, reason)
            out.append(SampledToken(seq, token, lps, reason))
        return out

    def _stop_reason(self, seq: Sequence, token: int) -> str | None:
        p = seq.params
        if token in p.stop_token_set or (not p.ignore_eos and token in self.eos_token_ids):
            return "stop"
        if len(seq.output_token_ids) >= seq.max_output_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    def schedule(self) -> list[ScheduledSeq]:
        budget = self.max_num_batched_tokens
        scheduled: list[ScheduledSeq] = []
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            while not self.block_manager.can_allocate(seq, seq.num_computed_tokens + n):
                victim = self.running[-1]
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            else:
                self.block_manager.allocate(seq, seq.num_computed_tokens + n)
                scheduled.append(ScheduledSeq(seq, n))
                budget -= n
                i += 1
                continue
            break  # seq itself was preempted: it was the last running one
        if preempted:
            return scheduled
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            if not self.block_manager.can_allocate(seq, seq.num_computed_tokens + n):
                break
            self.waiting.popleft()
            self.block_manager.allocate(seq, seq.num_computed_tokens + n)
            seq.status = Status.RUNNING
            self.running.append(seq)
            scheduled.append(ScheduledSeq(seq, n))
            budget -= n
        return scheduled

    def schedule_ahead(self, seqs: list[Sequence]) -> list[ScheduledSeq] | None:
        """The next decode step of `seqs`, every running sequence, while their current decode step still
        runs: each is one token further than its state says. Only when nothing waits and every sequence's
        next slot fits without preempting; otherwise None, and the next step is scheduled as usual, after
        this one is read back. A sequence that this step ends computes one token for nothing."""
        if self.waiting or not seqs or len(seqs) != len(self.running):
            return None
        if any(seq.status is not Status.RUNNING for seq in seqs):
            return None
        needed = sum(self.block_manager.blocks_needed(seq, seq.num_tokens + 1) for seq in seqs)
        if needed > self.block_manager.num_free_blocks:
            return None
        for seq in seqs:
            self.block_manager.allocate(seq, seq.num_tokens + 1)
        return [ScheduledSeq(seq, 1) for seq in seqs]

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.status = Status.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

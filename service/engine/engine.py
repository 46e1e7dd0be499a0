"""The engine: add requests, step, abort. One `step()` schedules, runs (the runner samples), lets the scheduler
account for the sampled tokens, and builds the outputs: detokenising, and checking stop strings, is all
the engine itself does to a sequence."""

import logging
from dataclasses import dataclass

import torch

from service.config import EngineConfig
from service.engine.block_manager import BlockManager
from service.engine.detokenizer import Detokenizer
from service.engine.model_runner import ModelRunner
from service.engine.outputs import RequestOutput
from service.engine.sampler import DeviceSample, SamplerOutput
from service.engine.sampling_params import SamplingParams
from service.engine.scheduler import SampledToken, Scheduler, ScheduledSeq
from service.engine.sequence import Sequence
from service.errors import ConfigError, InvalidRequest, quote

log = logging.getLogger(__name__)

MAX_REQUEST_ID_CHARS = 256


@dataclass(slots=True)
class EngineStats:
    num_running: int
    num_waiting: int
    num_free_blocks: int
    num_usable_blocks: int
    num_preemptions: int
    num_ooms: int


@dataclass(slots=True)
class InflightStep:
    batch: list[ScheduledSeq]
    sampling: list[ScheduledSeq]  # the batch's sequences that sample, in the order of on_device's rows
    on_device: DeviceSample | None


class LLMEngine:
    def __init__(self, config: EngineConfig, runner: ModelRunner):
        """runner: a ModelRunner whose KV cache is allocated (service.boot sizes it); its blocks are the
        block manager's."""
        self.config = config
        self.runner = runner
        self.tokenizer = runner.loaded.tokenizer
        self.model_config = runner.model_config
        self.max_model_len = runner.max_model_len
        layout, num_blocks = runner.layout, runner.num_kv_blocks
        if num_blocks < layout.min_num_blocks:
            raise ConfigError(
                f"the KV cache holds {num_blocks} blocks of {layout.block_size} tokens, fewer than the "
                f"{layout.min_num_blocks} that one max_model_len={self.max_model_len} sequence needs (plus the "
                f"reserved block); raise kv_cache_memory_bytes to at least "
                f"{layout.min_num_blocks * layout.bytes_per_block} or lower max_model_len"
            )
        self.block_manager = BlockManager(num_blocks, layout.block_size)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens,
                                   self.max_model_len, self.model_config.eos_token_ids)
        self.sequences: dict[str, Sequence] = {}
        self.detokenizers: dict[str, Detokenizer] = {}
        self.num_ooms = 0
        self.pending: list[SampledToken] = []  # the last step's tokens, whose outputs the next step builds
        self.inflight: InflightStep | None = None  # a step queued on the device, not yet read back

    # --- requests -----------------------------------------------------------------------------------
    def validate(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Raises InvalidRequest naming the field and the limit. Safe to call from any thread."""
        if not request_id or len(request_id) > MAX_REQUEST_ID_CHARS:
            raise InvalidRequest("request_id", f"must have 1 to {MAX_REQUEST_ID_CHARS} characters")
        if not prompt_token_ids:
            raise InvalidRequest("prompt", "must not be empty")
        if len(prompt_token_ids) >= self.max_model_len:
            raise InvalidRequest(
                "prompt",
                f"{len(prompt_token_ids)} tokens; the limit is max_model_len - 1 = {self.max_model_len - 1} "
                f"(max_model_len={self.max_model_len})",
            )
        vocab = self.model_config.vocab_size
        bad = next((t for t in prompt_token_ids if not isinstance(t, int) or not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidRequest("prompt_token_ids", f"token id {quote(bad)} is outside the vocabulary [0, {vocab})")
        params.validate(vocab)

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self.validate(request_id, prompt_token_ids, params)
        if request_id in self.sequences:
            raise InvalidRequest("request_id", f"{request_id!r} is already running")
        room = self.max_model_len - len(prompt_token_ids)  # validate() left at least 1
        seq = Sequence(request_id, list(prompt_token_ids), params, max_output_tokens=min(params.max_tokens, room))
        self.sequences[request_id] = seq
        self.detokenizers[request_id] = Detokenizer(params.stop, self.tokenizer.decode_stream())
        self.scheduler.add(seq)

    def abort(self, request_id: str) -> RequestOutput | None:
        seq = self.sequences.get(request_id)
        if seq is None:
            return None
        self.scheduler.finish(seq, "abort")
        return self._finished_output(seq, "")

    def has_unfinished(self) -> bool:
        """Requests to run, a step in flight, or outputs of the last step not yet returned."""
        return self.scheduler.has_unfinished() or bool(self.pending) or self.inflight is not None

    def count_oom(self) -> None:
        """Every device OOM, in a step or in boot's warm-up, is counted here and only here; whoever serves the
        engine reads the count from stats() and records each new OOM against the plan once."""
        self.num_ooms += 1

    def stats(self) -> EngineStats:
        return EngineStats(len(self.scheduler.running), len(self.scheduler.waiting),
                           self.block_manager.num_free_blocks, self.block_manager.num_usable_blocks,
                           self.scheduler.num_preemptions, self.num_ooms)

    # --- the loop -----------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """One step. Its batch's model run and sampling are queued on the device (or were, by the step
        before); while the GPU runs them the host builds the previous step's outputs (detokenising, stop
        strings) and, for a pure-decode batch with nothing waiting, queues the next decode step behind this
        one, its input ids taken from this step's sampled ids on the device; then this step's tokens are
        read back and accounted. So a step returns the previous step's outputs, a step with nothing to run
        returns the last ones, and the GPU need not wait for the host between decode steps."""
        if self.inflight is None:
            batch = self.scheduler.schedule()
            if not batch:
                return self._take_outputs()
            try:
                self.inflight = InflightStep(batch, *self.runner.launch(batch))
            except torch.OutOfMemoryError as e:
                outputs = self._take_outputs()
                return outputs + self._fail_batch([s for s in batch if not s.seq.finished], e)
        current, self.inflight = self.inflight, None
        outputs = self._take_outputs()
        self.inflight = self._launch_ahead(current)
        return outputs + self._account(current)

    def _launch_ahead(self, current: InflightStep) -> InflightStep | None:
        if not self.config.async_scheduling or current.on_device is None:
            return None
        if len(current.sampling) != len(current.batch) or any(s.num_new_tokens != 1 for s in current.batch):
            return None
        rows = [i for i, s in enumerate(current.sampling) if not s.seq.finished]
        batch = self.scheduler.schedule_ahead([current.sampling[i].seq for i in rows])
        if batch is None:
            return None
        sampled = current.on_device.sampled
        if len(rows) < len(current.sampling):
            sampled = sampled[torch.tensor(rows, device=sampled.device)]
        try:
            return InflightStep(batch, *self.runner.launch(batch, after=sampled))
        except torch.OutOfMemoryError:
            log.warning("no room to queue a decode step ahead; the next step runs after this one")
            return None

    def _account(self, current: InflightStep) -> list[RequestOutput]:
        """Reads the step's tokens back and gives them to the scheduler; their outputs are built next step.
        A sequence that ended since the step was queued (a stop string in the previous step's text, an
        abort, or its token of the step before) drops its token from this one."""
        sampling, batch = current.sampling, current.batch
        sampled = current.on_device.to_host() if current.on_device is not None else SamplerOutput([], [])
        failed = [(sampling[i].seq, why) for i, why in sampled.failed.items() if not sampling[i].seq.finished]
        keep = [i for i, s in enumerate(sampling) if not s.seq.finished and i not in sampled.failed]
        if len(keep) < len(sampling):
            sampling = [sampling[i] for i in keep]
            sampled = SamplerOutput([sampled.token_ids[i] for i in keep], [sampled.logprobs[i] for i in keep])
        batch = [s for s in batch if not s.seq.finished]
        self.pending = self.scheduler.update_from_output(batch, sampling, sampled)
        outputs = []
        for seq, why in failed:  # validation should have stopped these; they fail alone
            log.error("request %s failed in the sampler: %s", seq.request_id, why)
            self.scheduler.finish(seq, "error")
            outputs.append(self._finished_output(seq, "", error=f"internal error: {why}"))
        return outputs

    def _take_outputs(self) -> list[RequestOutput]:
        """The outputs of the tokens the last step sampled, for the requests still known (an abort in
        between already answered its request)."""
        pending, self.pending = self.pending, []
        return [self._output(t) for t in pending if self.sequences.get(t.seq.request_id) is t.seq]

    def _output(self, t: SampledToken) -> RequestOutput:
        seq = t.seq
        new_text, hit_stop = self.detokenizers[seq.request_id].update(seq.output_token_ids)
        if hit_stop:
            self.scheduler.finish(seq, "stop")
        if seq.finished:
            out = self._finished_output(seq, new_text, [t.token])
        else:
            out = RequestOutput(seq.request_id, [t.token], new_text, num_prompt_tokens=seq.num_prompt_tokens,
                                num_output_tokens=len(seq.output_token_ids))
        out.logprobs = [t.logprobs] if t.logprobs is not None else []
        return out

    def _finished_output(self, seq: Sequence, new_text: str, new_tokens=(), error=None) -> RequestOutput:
        """The last output of a sequence the scheduler has finished; the engine forgets it."""
        reason = seq.finish_reason
        detok = self.detokenizers.pop(seq.request_id)
        del self.sequences[seq.request_id]
        tail = detok.flush() if reason in ("length", "stop") else ""  # text held back for a stop string
        capped = seq.max_output_tokens if seq.max_output_tokens < seq.params.max_tokens else None
        return RequestOutput(seq.request_id, list(new_tokens), new_text + tail, finished=True, finish_reason=reason,
                             error=error, num_prompt_tokens=seq.num_prompt_tokens,
                             num_output_tokens=len(seq.output_token_ids), max_tokens_capped_to=capped)

    def _fail_batch(self, batch: list[ScheduledSeq], e: Exception) -> list[RequestOutput]:
        """A CUDA OOM inside a step ends the batch's requests with an error; the engine keeps serving."""
        self.count_oom()
        log.error("CUDA out of memory in a step of %d requests; they end with an error: %s", len(batch), e)
        torch.cuda.empty_cache()
        msg = f"resource exhausted: the device ran out of memory while running this request ({e})"
        outputs = []
        for s in batch:
            self.scheduler.finish(s.seq, "error")
            outputs.append(self._finished_output(s.seq, "", error=msg))
        return outputs

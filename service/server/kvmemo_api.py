"""The kvmemo.v1.KvmemoService servicer: Generate and Chat (streaming), Complete (unary), Tokenize,
GetModelInfo."""

from contextlib import aclosing

import grpc

from service.chat import encode_chat, render_chat, template_of
from service.engine.sampling_params import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P, SamplingParams
from service.errors import InvalidRequest
from service.proto.kvmemo.v1 import kvmemo_pb2 as pb
from service.proto.kvmemo.v1 import kvmemo_pb2_grpc as pb_grpc
from service.server.requests import Timing, abort_with, check_request_id, encode_prompt, generate
from service.server.state import RequestError, ServerState

FINISH = {"stop": pb.FINISH_REASON_STOP, "length": pb.FINISH_REASON_LENGTH}


def sampling_params(request: pb.GenerateRequest | pb.ChatRequest) -> SamplingParams:
    """Unset optional fields take SamplingParams' defaults; the engine validates every range."""
    s, stop = request.sampling, request.stop
    return SamplingParams(
        max_tokens=request.max_tokens if request.HasField("max_tokens") else DEFAULT_MAX_TOKENS,
        temperature=s.temperature if s.HasField("temperature") else DEFAULT_TEMPERATURE,
        top_k=s.top_k if s.HasField("top_k") else DEFAULT_TOP_K,
        top_p=s.top_p if s.HasField("top_p") else DEFAULT_TOP_P,
        min_p=s.min_p if s.HasField("min_p") else 0.0,
        seed=s.seed if s.HasField("seed") else None,
        stop=tuple(stop.stop),
        stop_token_ids=tuple(stop.stop_token_ids),
        ignore_eos=stop.ignore_eos,
        logprobs=request.logprobs if request.HasField("logprobs") else None,
    )


def prompt_ids(state: ServerState, request: pb.GenerateRequest) -> list[int]:
    kind = request.WhichOneof("prompt")
    if kind == "text":
        return encode_prompt(state, request.text)
    if kind == "token_ids":
        return list(request.token_ids.ids)
    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "prompt: set either text or token_ids")


def chat_prompt_ids(state: ServerState, request: pb.ChatRequest) -> list[int]:
    tokenizer = state.engine.tokenizer
    try:
        text = render_chat(tokenizer, [(m.role, m.content) for m in request.messages])
    except InvalidRequest as e:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
    return encode_chat(tokenizer, text)


def logprobs_pb(entries) -> list[pb.Logprobs]:
    out = []
    for entry in entries:
        (sampled_id, sampled_lp), *top = entry
        out.append(pb.Logprobs(sampled=pb.TokenLogprob(token_id=sampled_id, logprob=sampled_lp),
                               top=[pb.TokenLogprob(token_id=i, logprob=lp) for i, lp in top]))
    return out


def usage(out, timing: Timing) -> pb.Usage:
    return pb.Usage(prompt_tokens=out.num_prompt_tokens, completion_tokens=out.num_output_tokens,
                    total_tokens=out.num_prompt_tokens + out.num_output_tokens,
                    time_to_first_token_seconds=timing.ttft, total_seconds=timing.total,
                    max_tokens_capped_to=out.max_tokens_capped_to or 0)


class KvmemoServicer(pb_grpc.KvmemoServiceServicer):
    def __init__(self, state: ServerState):
        self.state = state

    def _prepare(self, request: pb.GenerateRequest | pb.ChatRequest, prompt_of=prompt_ids):
        self.state.check_model(request.model)
        check_request_id(request.request_id)
        return prompt_of(self.state, request), sampling_params(request)

    async def Generate(self, request, context):
        async with aclosing(self._stream(request, context, prompt_ids)) as messages:
            async for msg in messages:
                yield msg

    async def Chat(self, request, context):
        async with aclosing(self._stream(request, context, chat_prompt_ids)) as messages:
            async for msg in messages:
                yield msg

    async def _stream(self, request, context, prompt_of):
        timing = Timing()
        try:
            prompt, params = self._prepare(request, prompt_of)
            async with aclosing(generate(self.state, prompt, params, timing)) as outputs:
                async for out in outputs:
                    msg = pb.GenerateResponse(token_ids=out.new_token_ids, text=out.new_text,
                                              logprobs=logprobs_pb(out.logprobs), request_id=request.request_id)
                    if out.finished:
                        msg.finish_reason = FINISH[out.finish_reason]
                        msg.usage.CopyFrom(usage(out, timing))
                    yield msg
        except RequestError as e:
            await abort_with(context, e)

    async def Complete(self, request, context):
        timing = Timing()
        reply = pb.CompleteResponse(request_id=request.request_id)
        texts = []
        try:
            prompt, params = self._prepare(request)
            async with aclosing(generate(self.state, prompt, params, timing)) as outputs:
                async for out in outputs:
                    reply.token_ids.extend(out.new_token_ids)
                    reply.logprobs.extend(logprobs_pb(out.logprobs))
                    texts.append(out.new_text)
                    if out.finished:
                        reply.finish_reason = FINISH[out.finish_reason]
                        reply.usage.CopyFrom(usage(out, timing))
        except RequestError as e:
            await abort_with(context, e)
        reply.text = "".join(texts)
        return reply

    async def Tokenize(self, request, context):
        try:
            self.state.check_model(request.model)
            return pb.TokenizeResponse(token_ids=encode_prompt(self.state, request.text, "text"))
        except RequestError as e:
            await abort_with(context, e)

    async def GetModelInfo(self, request, context):
        try:
            self.state.check_model(request.model)
        except RequestError as e:
            await abort_with(context, e)
        return model_info(self.state)


def model_info(state: ServerState) -> pb.ModelInfo:
    info = pb.ModelInfo(name=state.model_name, max_num_seqs=state.config.max_num_seqs,
                        block_size=state.config.block_size)
    llm, report = state.engine, state.report
    if llm is not None:
        info.architecture = llm.model_config.architecture
        info.max_model_len = llm.max_model_len
        info.vocab_size = llm.model_config.vocab_size
        info.kv_blocks_total = llm.block_manager.num_usable_blocks
        info.kv_blocks_free = llm.block_manager.num_free_blocks
        info.device = str(llm.runner.device)
        info.dtype = str(llm.runner.dtype).removeprefix("torch.")
        info.has_chat_template = template_of(llm.tokenizer) is not None
    if report is not None:
        info.kv_cache_memory_bytes = report.kv_cache_memory_bytes
        info.plan_source = report.plan_source
        info.plan_fingerprint = report.fingerprint[:12]
    return info

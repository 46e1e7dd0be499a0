"""inference.GRPCInferenceService: KServe v2 (ServerLive/Ready, ModelReady, ServerMetadata, ModelMetadata,
ModelInfer) and Triton's ModelStreamInfer and ModelConfig, for one decoupled LLM model."""

import asyncio
import logging
from contextlib import aclosing
from importlib.metadata import version

import grpc

from service.engine.engine import MAX_REQUEST_ID_CHARS
from service.errors import quote
from service.proto.inference import grpc_service_pb2 as pb
from service.proto.inference import grpc_service_pb2_grpc as pb_grpc
from service.proto.inference import model_config_pb2 as mc
from service.server.guard import INTERNAL_MESSAGE, Malformed
from service.server.rejections import REJECTIONS
from service.server.requests import Timing, abort_with, check_request_id, encode_prompt, error_text, generate
from service.server.state import RequestError, ServerState
from service.server.tensors import invalid, output, read_inputs
from service.server.triton_llm import LLMRequest, llm_request

log = logging.getLogger(__name__)
MODEL_VERSION = "1"
# (name, datatype, shape, optional): the vLLM backend's tensors plus the per-field ones
INPUTS = [("text_input", "BYTES", [1], False), ("stream", "BOOL", [1], True),
          ("sampling_parameters", "BYTES", [1], True), ("exclude_input_in_output", "BOOL", [1], True),
          ("max_tokens", "INT32", [1], True), ("temperature", "FP32", [1], True), ("top_k", "INT32", [1], True),
          ("top_p", "FP32", [1], True), ("min_p", "FP32", [1], True), ("seed", "UINT64", [1], True),
          ("ignore_eos", "BOOL", [1], True), ("stop", "BYTES", [-1], True),
          ("return_finish_reason", "BOOL", [1], True), ("return_num_input_tokens", "BOOL", [1], True),
          ("return_num_output_tokens", "BOOL", [1], True)]
OUTPUTS = [("text_output", "BYTES", [-1]), ("finish_reason", "BYTES", [-1]), ("num_input_tokens", "UINT32", [1]),
           ("num_output_tokens", "UINT32", [1])]
CONFIG_TYPES = {"BYTES": mc.TYPE_STRING, "BOOL": mc.TYPE_BOOL, "INT32": mc.TYPE_INT32, "FP32": mc.TYPE_FP32,
                "UINT64": mc.TYPE_UINT64, "UINT32": mc.TYPE_UINT32}


class KServeServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, state: ServerState):
        self.state = state

    def _check_model(self, name: str, version_: str) -> None:
        if not name:
            raise invalid("model_name: missing; this server serves " + repr(self.state.model_name))
        self.state.check_model(name)
        if version_ and version_ != MODEL_VERSION:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"model {quote(name)} has no version {quote(version_)}; its only version is {MODEL_VERSION!r}")

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.state.ready and not self.state.draining)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="kvmemo", version=version("kvmemo"), extensions=["model_configuration"])

    async def ModelReady(self, request, context):
        try:
            self._check_model(request.name, request.version)
        except RequestError as e:
            await abort_with(context, e)
        return pb.ModelReadyResponse(ready=self.state.ready and not self.state.draining)

    async def ModelMetadata(self, request, context):
        try:
            self._check_model(request.name, request.version)
        except RequestError as e:
            await abort_with(context, e)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=self.state.model_name, versions=[MODEL_VERSION], platform="kvmemo",
            inputs=[tensor(name=n, datatype=d, shape=s) for n, d, s, _ in INPUTS],
            outputs=[tensor(name=n, datatype=d, shape=s) for n, d, s in OUTPUTS])

    async def ModelConfig(self, request, context):
        try:
            self._check_model(request.name, request.version)
        except RequestError as e:
            await abort_with(context, e)
        return pb.ModelConfigResponse(config=mc.ModelConfig(
            name=self.state.model_name, backend="kvmemo", max_batch_size=0,
            input=[mc.ModelInput(name=n, data_type=CONFIG_TYPES[d], dims=s, optional=o) for n, d, s, o in INPUTS],
            output=[mc.ModelOutput(name=n, data_type=CONFIG_TYPES[d], dims=s) for n, d, s in OUTPUTS],
            model_transaction_policy=mc.ModelTransactionPolicy(decoupled=True)))

    def _parse(self, request: pb.ModelInferRequest) -> LLMRequest:
        self._check_model(request.model_name, request.model_version)
        check_request_id(request.id)
        return llm_request(read_inputs(request))

    def _response(self, request, llm: LLMRequest, text: str, out, final: bool) -> pb.ModelInferResponse:
        response = pb.ModelInferResponse(model_name=self.state.model_name, model_version=MODEL_VERSION,
                                         id=request.id)
        output(response, "text_output", "BYTES", [text.encode()])
        if final and llm.return_finish_reason:
            output(response, "finish_reason", "BYTES", [out.finish_reason.encode()])
        if final and llm.return_num_input_tokens:
            output(response, "num_input_tokens", "UINT32", [out.num_prompt_tokens])
        if final and llm.return_num_output_tokens:
            output(response, "num_output_tokens", "UINT32", [out.num_output_tokens])
        response.parameters["triton_final_response"].bool_param = final
        if final and out.max_tokens_capped_to:  # max_tokens was more than max_model_len - prompt tokens
            response.parameters["max_tokens_capped_to"].int64_param = out.max_tokens_capped_to
        return response

    async def _run(self, request: pb.ModelInferRequest, llm: LLMRequest, streaming: bool):
        """Yields ModelInferResponses: one per engine output when streaming, else one at the end."""
        prompt = encode_prompt(self.state, llm.text, "text_input")
        texts = [] if llm.exclude_input_in_output or streaming else [llm.text]
        async with aclosing(generate(self.state, prompt, llm.params, Timing())) as outputs:
            async for out in outputs:
                if streaming:
                    yield self._response(request, llm, out.new_text, out, out.finished)
                else:
                    texts.append(out.new_text)
                    if out.finished:
                        yield self._response(request, llm, "".join(texts), out, True)

    async def ModelInfer(self, request, context):
        try:
            llm = self._parse(request)
            if llm.stream:
                raise invalid("stream: true needs the streaming RPC ModelStreamInfer; ModelInfer answers once")
            async with aclosing(self._run(request, llm, streaming=False)) as responses:
                async for response in responses:
                    return response
        except RequestError as e:
            await abort_with(context, e)

    async def _stream_one(self, request: pb.ModelInferRequest | Malformed, responses: asyncio.Queue) -> None:
        """Every request on the stream gets an answer: its responses, or one final error response."""
        try:
            if isinstance(request, Malformed):
                raise invalid(request.message)
            llm = self._parse(request)
            async for response in self._run(request, llm, streaming=llm.stream):
                await responses.put(pb.ModelStreamInferResponse(infer_response=response))
        except RequestError as e:
            await responses.put(self._stream_error(request, e))
        except Exception as e:  # a bug fails this request alone; the stream stays open
            await responses.put(self._stream_error(request, RequestError(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE), e))

    def _stream_error(self, request, error: RequestError, cause: Exception | None = None) -> pb.ModelStreamInferResponse:
        """As Triton does: a failed request is reported in the stream, which stays open for the others. Its
        response is final (triton_final_response), so a client waiting for the end of that request stops."""
        if REJECTIONS.record(error.code, error.message) and cause is not None:  # within the rate limit
            log.error("a ModelStreamInfer request failed", exc_info=cause)
        failed = pb.ModelInferResponse(model_name=self.state.model_name, model_version=MODEL_VERSION)
        if isinstance(request, pb.ModelInferRequest) and len(request.id) <= MAX_REQUEST_ID_CHARS:
            failed.id = request.id
        failed.parameters["triton_final_response"].bool_param = True
        return pb.ModelStreamInferResponse(error_message=error_text(error), infer_response=failed)

    async def ModelStreamInfer(self, request_iterator, context):
        """Each request on the stream runs concurrently; its responses are interleaved with the others'."""
        responses: asyncio.Queue = asyncio.Queue()
        tasks: set[asyncio.Task] = set()
        done = object()

        async def read():
            try:
                async for request in request_iterator:
                    task = asyncio.create_task(self._stream_one(request, responses))
                    tasks.add(task)
                    task.add_done_callback(responses.put_nowait)
            finally:
                responses.put_nowait(done)

        reader = asyncio.create_task(read())
        reading, finished = True, 0
        try:
            while reading or finished < len(tasks):
                item = await responses.get()
                if item is done:
                    reading = False
                elif isinstance(item, asyncio.Task):
                    finished += 1
                else:
                    yield item
            await reader
        finally:
            for task in [reader, *tasks]:
                task.cancel()

"""The tensors of Triton's LLM backends (named as the vLLM backend names them) mapped onto a request.

Inputs: `text_input` BYTES [1] (required); `stream` BOOL [1]; `sampling_parameters` BYTES [1], a JSON
object; `exclude_input_in_output` BOOL [1]; per-field inputs (`max_tokens`, `temperature`, `top_k`, `top_p`,
`min_p`, `seed`/`random_seed`, `ignore_eos`, `stop`, `stop_token_ids`, `logprobs`) that override the JSON;
`return_finish_reason`, `return_num_input_tokens`, `return_num_output_tokens` BOOL [1].
Outputs: `text_output` BYTES [1]; on request `finish_reason` BYTES [1], `num_input_tokens` and
`num_output_tokens` UINT32 [1]."""

import json
from dataclasses import dataclass

from service.engine.sampling_params import DEFAULT_MAX_TOKENS, SamplingParams
from service.errors import quote
from service.server.tensors import invalid

MAX_SAMPLING_PARAMETERS_BYTES = 64 << 10  # the JSON object (docs/limits.md); its lists are bounded by validation
BYTES_INPUTS = ("text_input", "sampling_parameters")
JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true or false",
              type(None): "null"}

# sampling field -> the Python types its JSON or tensor value may have (bool is no int here)
FIELDS = {"max_tokens": int, "temperature": float, "top_k": int, "top_p": float, "min_p": float, "seed": int,
          "ignore_eos": bool, "stop": list, "stop_token_ids": list, "logprobs": int}
ALIASES = {"random_seed": "seed", "stop_words": "stop"}
FLAGS = ("stream", "exclude_input_in_output", "return_finish_reason", "return_num_input_tokens",
         "return_num_output_tokens")
KNOWN_INPUTS = {"text_input", "sampling_parameters", *FLAGS, *FIELDS, *ALIASES}


@dataclass(slots=True)
class LLMRequest:
    text: str
    params: SamplingParams
    stream: bool = False
    exclude_input_in_output: bool = False
    return_finish_reason: bool = False
    return_num_input_tokens: bool = False
    return_num_output_tokens: bool = False


def coerce(name: str, value, kind: type):
    """JSON numbers, numeric strings (the vLLM backend accepts them) and tensor scalars to `kind`."""
    if kind is list:
        value = value if isinstance(value, list) else [value]
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise invalid(f"{name}: must be true or false, got {quote(value)}")
    if isinstance(value, bool):
        raise invalid(f"{name}: must be a number, got {quote(value)}")
    try:
        converted = kind(value)
    except (TypeError, ValueError, OverflowError):
        raise invalid(f"{name}: must be {'an integer' if kind is int else 'a number'}, got {quote(value)}") from None
    if kind is int and isinstance(value, float) and value != converted:
        raise invalid(f"{name}: must be an integer, got {quote(value)}")
    return converted


def single(inputs: dict, name: str):
    datatype, values = inputs[name]
    if len(values) != 1:
        raise invalid(f"{name}: {len(values)} elements; kvmemo takes exactly one (one prompt per request)")
    return values[0]


def sampling_fields(inputs: dict) -> dict:
    fields = {}
    if "sampling_parameters" in inputs:
        raw = single(inputs, "sampling_parameters")
        if len(raw) > MAX_SAMPLING_PARAMETERS_BYTES:
            raise invalid(f"sampling_parameters: {len(raw)} bytes; the limit is {MAX_SAMPLING_PARAMETERS_BYTES}")
        try:
            fields = json.loads(raw)
        except ValueError as e:  # also bad UTF-8
            raise invalid(f"sampling_parameters: not valid JSON ({quote(str(e), 80)})") from None
        except RecursionError:
            raise invalid("sampling_parameters: not valid JSON (nested too deeply)") from None
        if not isinstance(fields, dict):
            raise invalid(f"sampling_parameters: must be a JSON object, got {JSON_KINDS.get(type(fields), 'no object')}")
    for name, (datatype, values) in inputs.items():
        key = ALIASES.get(name, name)
        if key in FIELDS:
            fields[key] = values if FIELDS[key] is list else single(inputs, name)
    return fields


def llm_request(inputs: dict) -> LLMRequest:
    unknown = sorted(set(inputs) - KNOWN_INPUTS)
    if unknown:
        raise invalid(f"inputs {quote(unknown)} are not known; known inputs: {', '.join(sorted(KNOWN_INPUTS))}")
    for name in BYTES_INPUTS:
        if name in inputs and inputs[name][0] != "BYTES":
            raise invalid(f"{name}: must be a BYTES tensor, got {inputs[name][0]}")
    if "text_input" not in inputs:
        raise invalid("text_input: missing; send the prompt as a BYTES tensor of shape [1]")
    text = single(inputs, "text_input")
    try:
        text = text.decode("utf-8")
    except (AttributeError, UnicodeDecodeError):
        raise invalid("text_input: must be UTF-8 text in a BYTES tensor") from None
    fields = {ALIASES.get(k, k): v for k, v in sampling_fields(inputs).items()}
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise invalid(f"sampling_parameters: {quote(unknown)} are not known; known fields: {', '.join(FIELDS)}")
    kwargs = {k: coerce(k, v, FIELDS[k]) for k, v in fields.items() if v is not None}
    kwargs.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
    for key in ("stop", "stop_token_ids"):
        if key in kwargs:
            kind = str if key == "stop" else int
            if not all(isinstance(v, kind) and not isinstance(v, bool) for v in kwargs[key]):
                raise invalid(f"{key}: must be a list of {'strings' if kind is str else 'integers'}")
            kwargs[key] = tuple(kwargs[key])
    flags = {f: coerce(f, single(inputs, f), bool) for f in FLAGS if f in inputs}
    return LLMRequest(text=text, params=SamplingParams(**kwargs), **flags)

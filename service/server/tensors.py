"""KServe v2 tensors in and out: raw little-endian contents or typed `contents`, BYTES as 4-byte
little-endian length + data per element."""

import struct

import grpc

from service.errors import quote
from service.proto.inference import grpc_service_pb2 as pb
from service.server.state import RequestError

# datatype -> (struct format, InferTensorContents field)
DTYPES = {
    "BOOL": ("?", "bool_contents"), "INT8": ("b", "int_contents"), "INT16": ("h", "int_contents"),
    "INT32": ("i", "int_contents"), "INT64": ("q", "int64_contents"), "UINT8": ("B", "uint_contents"),
    "UINT16": ("H", "uint_contents"), "UINT32": ("I", "uint_contents"), "UINT64": ("Q", "uint64_contents"),
    "FP32": ("f", "fp32_contents"), "FP64": ("d", "fp64_contents"), "BYTES": (None, "bytes_contents"),
}
# Limits on what a ModelInferRequest may carry (docs/limits.md); each is checked before anything loops over it.
MAX_ELEMENTS = 1024  # per tensor
MAX_DIMS = 8  # per tensor shape
MAX_INPUTS = 32  # tensors per request
MAX_NAME_CHARS = 64  # a tensor's name


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def decode_bytes(name: str, raw: bytes, count: int | None = None) -> list[bytes]:
    """count: the elements the shape needs; data holding more is rejected without decoding the rest."""
    values, at = [], 0
    while at < len(raw):
        if count is not None and len(values) == count:
            raise invalid(f"{name}: the BYTES data holds more than the shape's {count} elements")
        if at + 4 > len(raw):
            raise invalid(f"{name}: BYTES data ends inside an element's 4-byte length prefix")
        (size,) = struct.unpack_from("<I", raw, at)
        if at + 4 + size > len(raw):
            raise invalid(f"{name}: BYTES element of {size} bytes runs past the end of the data ({len(raw)} bytes)")
        values.append(raw[at + 4: at + 4 + size])
        at += 4 + size
    return values


def encode_bytes(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def decode_raw(name: str, datatype: str, raw: bytes, count: int | None = None) -> list:
    fmt, _ = DTYPES[datatype]
    if fmt is None:
        return decode_bytes(name, raw, count)
    size = struct.calcsize(fmt)
    if len(raw) % size:
        raise invalid(f"{name}: {len(raw)} bytes of raw {datatype} data is not a multiple of {size}")
    if count is not None and len(raw) != count * size:
        raise invalid(f"{name}: the shape needs {count} elements, the data has {len(raw) // size}")
    return list(struct.unpack(f"<{len(raw) // size}{fmt}", raw))


def read_inputs(request: pb.ModelInferRequest) -> dict[str, tuple[str, list]]:
    """name -> (datatype, flat values). Checks datatypes, element counts against shapes and duplicates."""
    raw = request.raw_input_contents
    if len(request.inputs) > MAX_INPUTS:
        raise invalid(f"inputs: {len(request.inputs)} tensors; the limit is {MAX_INPUTS}")
    if raw and len(raw) != len(request.inputs):
        raise invalid(f"raw_input_contents: {len(raw)} entries for {len(request.inputs)} inputs; they must match")
    inputs = {}
    for i, tensor in enumerate(request.inputs):
        name, datatype, shape = tensor.name, tensor.datatype, tensor.shape
        if len(name) > MAX_NAME_CHARS:
            raise invalid(f"inputs[{i}].name: {quote(name)}; the limit is {MAX_NAME_CHARS} characters")
        if datatype not in DTYPES:
            raise invalid(f"{name}: datatype {quote(datatype)} is not one of {', '.join(DTYPES)}")
        if name in inputs:
            raise invalid(f"{name}: given twice")
        if len(shape) > MAX_DIMS:
            raise invalid(f"{name}: shape has {len(shape)} dimensions; the limit is {MAX_DIMS}")
        if any(d < 0 for d in shape):
            raise invalid(f"{name}: shape {list(shape)} has a negative dimension")
        count = 1
        for d in shape:
            count *= d
        if count > MAX_ELEMENTS:
            raise invalid(f"{name}: shape {list(shape)} has {count} elements; the limit is {MAX_ELEMENTS}")
        values = decode_raw(name, datatype, raw[i], count) if raw else getattr(tensor.contents, DTYPES[datatype][1])
        if len(values) != count:
            raise invalid(f"{name}: shape {list(shape)} needs {count} elements, the data has {len(values)}")
        inputs[name] = (datatype, list(values))
    return inputs


def output(response: pb.ModelInferResponse, name: str, datatype: str, values: list) -> None:
    """Appends an output tensor of shape [len(values)] as raw contents (what tritonclient reads)."""
    response.outputs.add(name=name, datatype=datatype, shape=[len(values)])
    fmt, _ = DTYPES[datatype]
    data = encode_bytes(values) if fmt is None else struct.pack(f"<{len(values)}{fmt}", *values)
    response.raw_output_contents.append(data)

"""One request beside hostile neighbours: the time of an unrelated 100-token Complete alone, beside N plain
requests, and beside N requests that carry every list at its limit (256 stop_token_ids, 16 stop strings of 256
characters), on a real `kvmemo serve --model tiny` on CPU. Issue 14 measured 229 ms alone and 8,050 ms beside
8 requests of 1,000,000 stop ids before the limits; those now get INVALID_ARGUMENT at once.

    python bench/hostile_neighbours.py [--neighbours 8] [--runs 3]

Prints one JSON object (no results file: the README has no table for it)."""

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.engine.sampling_params import MAX_STOP_STRING_CHARS, MAX_STOP_STRINGS, MAX_STOP_TOKEN_IDS  # noqa: E402
from service.proto.kvmemo.v1 import kvmemo_pb2 as pb  # noqa: E402
from service.proto.kvmemo.v1 import kvmemo_pb2_grpc as pb_grpc  # noqa: E402
from tests.server.conftest import start_server  # noqa: E402

SMALL = pb.GenerateRequest(text="An unrelated request", max_tokens=100, sampling=pb.SamplingParameters(temperature=0),
                           stop=pb.StopConditions(ignore_eos=True))
PLAIN = pb.GenerateRequest(text="A heavy neighbour", max_tokens=200, sampling=pb.SamplingParameters(temperature=0),
                           stop=pb.StopConditions(ignore_eos=True))
HEAVY = pb.GenerateRequest(text="A heavy neighbour", max_tokens=200, sampling=pb.SamplingParameters(temperature=0),
                           stop=pb.StopConditions(stop_token_ids=[300] * MAX_STOP_TOKEN_IDS, ignore_eos=True,
                                                  stop=["\x00" * MAX_STOP_STRING_CHARS] * MAX_STOP_STRINGS))


def timed(stub, request) -> float:
    start = time.perf_counter()
    stub.Complete(request, timeout=600)
    return (time.perf_counter() - start) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neighbours", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), "--max-model-len", "512", "--max-num-seqs", str(args.neighbours + 1))
        try:
            with server.channel() as channel:
                stub = pb_grpc.KvmemoServiceStub(channel)
                timed(stub, SMALL)  # warm
                result = {"neighbours": args.neighbours}
                with ThreadPoolExecutor(args.neighbours) as pool:
                    for label, neighbour in (("alone", None), ("beside_plain", PLAIN), ("beside_max_lists", HEAVY)):
                        runs = []
                        for _ in range(args.runs):
                            others = [pool.submit(timed, stub, neighbour) for _ in range(args.neighbours * bool(neighbour))]
                            runs.append(timed(stub, SMALL))
                            [f.result() for f in others]
                        result[f"small_{label}_ms_median"] = round(sorted(runs)[len(runs) // 2], 1)
        finally:
            server.stop()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

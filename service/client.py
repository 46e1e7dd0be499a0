"""`kvmemo generate "prompt"`: send a prompt to a running kvmemo server and print the generated text."""

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the prompt text")
    parser.add_argument("--server", default=os.environ.get("KVMEMO_SERVER", "localhost:50051"),
                        help="host:port of the server (default: localhost:50051) [KVMEMO_SERVER]")
    parser.add_argument("--model", default="", help="model name (default: whatever the server serves)")
    parser.add_argument("--stream", action="store_true", help="print tokens as they arrive")
    parser.add_argument("--max-tokens", type=int, default=None, help="most tokens to generate (server default 16)")
    parser.add_argument("--temperature", type=float, default=None, help="0 is greedy (server default 1.0)")
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None, help="the same seed gives the same text")
    parser.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    parser.add_argument("--timeout", type=float, default=300.0, help="deadline in seconds")
    parser.add_argument("--usage", action="store_true", help="print token counts and timings to stderr")


def build_request(args: argparse.Namespace):
    from service.proto.kvmemo.v1 import kvmemo_pb2 as pb

    request = pb.GenerateRequest(model=args.model, text=args.prompt, stop=pb.StopConditions(stop=args.stop))
    if args.max_tokens is not None:
        request.max_tokens = args.max_tokens
    for name in ("temperature", "top_p", "top_k", "seed"):
        if getattr(args, name) is not None:
            setattr(request.sampling, name, getattr(args, name))
    return request


def print_usage(usage, finish_reason: str) -> None:
    print(f"[{finish_reason}: {usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens, "
          f"first token {usage.time_to_first_token_seconds * 1000:.0f} ms, total {usage.total_seconds:.2f} s]",
          file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    import grpc

    from service.proto.kvmemo.v1 import kvmemo_pb2 as pb
    from service.proto.kvmemo.v1 import kvmemo_pb2_grpc as pb_grpc

    request = build_request(args)
    with grpc.insecure_channel(args.server) as channel:
        stub = pb_grpc.KvmemoServiceStub(channel)
        try:
            if args.stream:
                for message in stub.Generate(request, timeout=args.timeout):
                    print(message.text, end="", flush=True)
                    last = message
                print()
            else:
                last = stub.Complete(request, timeout=args.timeout)
                print(last.text)
        except grpc.RpcError as e:
            print(f"kvmemo generate: {e.code().name}: {e.details()} (server {args.server})", file=sys.stderr)
            return 1
    if args.usage:
        print_usage(last.usage, pb.FinishReason.Name(last.finish_reason))
    return 0

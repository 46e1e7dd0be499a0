"""`kvmemo generate "prompt"`: send a prompt to a running kvmemo server and print the generated text."""

import argparse
import os
import sys

from service.cli_text import for_terminal, read_prompt
from service.commands.sampling_args import add_prompt_argument, add_sampling_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_prompt_argument(parser)
    parser.add_argument("--server", default=os.environ.get("KVMEMO_SERVER", "localhost:50051"),
                        help="host:port of the server (default: localhost:50051) [KVMEMO_SERVER]")
    parser.add_argument("--model", default="", help="model name (default: whatever the server serves)")
    parser.add_argument("--stream", action="store_true", help="print tokens as they arrive")
    parser.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    parser.add_argument("--timeout", type=float, default=300.0, help="deadline in seconds (default: %(default)s)")
    parser.add_argument("--usage", action="store_true", help="print token counts and timings to stderr")
    add_sampling_arguments(parser)


def build_request(args: argparse.Namespace, prompt: str):
    from service.proto.kvmemo.v1 import kvmemo_pb2 as pb

    request = pb.GenerateRequest(model=args.model, text=prompt, stop=pb.StopConditions(stop=args.stop),
                                 max_tokens=args.max_tokens)
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

    try:
        prompt = read_prompt(args.prompt)
    except ValueError as e:
        print(f"kvmemo generate: {e}", file=sys.stderr)
        return 2
    request = build_request(args, prompt)
    # A long prompt (an @file) must not be refused by the client's own message limit before the server can
    # say what its limit is.
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(args.server, options=options) as channel:
        stub = pb_grpc.KvmemoServiceStub(channel)
        try:
            if args.stream:
                for message in stub.Generate(request, timeout=args.timeout):
                    print(for_terminal(message.text), end="", flush=True)
                    last = message
                print(flush=True)
            else:
                last = stub.Complete(request, timeout=args.timeout)
                print(for_terminal(last.text))
        except grpc.RpcError as e:
            print(f"kvmemo generate: {e.code().name}: {e.details()} (server {args.server})", file=sys.stderr)
            return 1
    if args.usage:
        print_usage(last.usage, pb.FinishReason.Name(last.finish_reason))
    return 0

"""`kvmemo chat`: talk to a running kvmemo server through its Chat RPC. With a message, prints the streamed
reply and exits; without one, a conversation at a `> ` prompt, the whole history sent each turn."""

import argparse
import os
import sys

# Sent with every request, so the reply does not depend on the server's defaults (which suit Generate).
DEFAULTS = {"max_tokens": 256, "temperature": 0.7, "top_p": 0.9, "top_k": 0, "timeout": 300.0}
HELP = "/reset forgets the conversation, /exit (or end of input) ends it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "interactive: " + HELP
    parser.add_argument("message", nargs="?", help="one message to answer, then exit; - reads standard input, "
                                                   "@path a file (default: interactive)")
    parser.add_argument("--server", default=os.environ.get("KVMEMO_SERVER", "localhost:50051"),
                        help="host:port of the server (default: %(default)s) [KVMEMO_SERVER]")
    parser.add_argument("--model", default="", help="model name (default: whatever the server serves)")
    parser.add_argument("--system", default=None, help="a system message that starts the conversation")
    parser.add_argument("--max-tokens", type=int, default=DEFAULTS["max_tokens"],
                        help="most tokens per reply (default: %(default)s; the server caps it at what the "
                             "context leaves and says so)")
    parser.add_argument("--temperature", type=float, default=DEFAULTS["temperature"],
                        help="0 is greedy (default: %(default)s)")
    parser.add_argument("--top-p", type=float, default=DEFAULTS["top_p"], help="(default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=DEFAULTS["top_k"], help="0 is off (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed: the same seed and conversation "
                                                               "give the same reply (default: none)")
    parser.add_argument("--timeout", type=float, default=DEFAULTS["timeout"],
                        help="deadline per reply in seconds (default: %(default)s)")
    parser.add_argument("--usage", action="store_true", help="print token counts and timings to stderr")


def conversation(system: str | None, turns: list[tuple[str, str]], message: str) -> list[tuple[str, str]]:
    """What one turn sends: the system message, every earlier (user, assistant) pair, the new message."""
    return ([("system", system)] if system else []) + list(turns) + [("user", message)]


def build_request(args: argparse.Namespace, messages: list[tuple[str, str]]):
    from service.proto.kvmemo.v1 import kvmemo_pb2 as pb

    request = pb.ChatRequest(model=args.model, max_tokens=args.max_tokens,
                             messages=[pb.ChatMessage(role=r, content=c) for r, c in messages],
                             sampling=pb.SamplingParameters(temperature=args.temperature, top_p=args.top_p,
                                                            top_k=args.top_k))
    if args.seed is not None:
        request.sampling.seed = args.seed
    return request


def reply(stub, args: argparse.Namespace, messages: list[tuple[str, str]]) -> str:
    """Streams one reply to stdout and returns its text. Raises grpc.RpcError."""
    from service.cli_text import for_terminal
    from service.commands.generate import print_usage
    from service.proto.kvmemo.v1 import kvmemo_pb2 as pb

    texts, last = [], None
    for last in stub.Chat(build_request(args, messages), timeout=args.timeout):
        texts.append(last.text)
        sys.stdout.write(for_terminal(last.text, sys.stdout))
        sys.stdout.flush()
    print(flush=True)
    if last.usage.max_tokens_capped_to:
        print(f"[max_tokens {args.max_tokens} is more than the context leaves after the "
              f"{last.usage.prompt_tokens}-token conversation: capped to {last.usage.max_tokens_capped_to}]",
              file=sys.stderr)
    if args.usage:
        print_usage(last.usage, pb.FinishReason.Name(last.finish_reason))
    return "".join(texts)


def interactive(stub, args: argparse.Namespace) -> None:
    """Raises grpc.RpcError for any failure but INVALID_ARGUMENT, which drops the turn and goes on."""
    import grpc

    turns: list[tuple[str, str]] = []
    print(f"kvmemo chat with {args.server}: {HELP}", file=sys.stderr)
    while True:
        try:
            message = input("> ")
        except EOFError:
            print()
            return
        if message.strip() == "/exit":
            return
        if message.strip() == "/reset":
            turns.clear()
            print("[conversation reset]", file=sys.stderr)
            continue
        if not message.strip():
            continue
        try:
            answer = reply(stub, args, conversation(args.system, turns, message))
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            print(f"kvmemo chat: {e.code().name}: {e.details()} (the turn is dropped; /reset starts over)",
                  file=sys.stderr)
            continue
        turns += [("user", message), ("assistant", answer)]


def main(args: argparse.Namespace) -> int:
    import grpc

    from service.cli_text import read_prompt
    from service.proto.kvmemo.v1 import kvmemo_pb2_grpc as pb_grpc

    try:
        message = read_prompt(args.message) if args.message is not None else None
    except ValueError as e:
        print(f"kvmemo chat: {e}", file=sys.stderr)
        return 1
    with grpc.insecure_channel(args.server) as channel:
        stub = pb_grpc.KvmemoServiceStub(channel)
        try:
            if message is None:
                interactive(stub, args)
            else:
                reply(stub, args, conversation(args.system, [], message))
        except grpc.RpcError as e:
            print(f"kvmemo chat: {e.code().name}: {e.details()} (server {args.server})", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 130
    return 0

"""The `kvmemo` console script. Each subcommand lives in its own module, which exposes
`add_arguments(parser)` and `main(args) -> int`; heavy imports stay inside `main`."""

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "serve": ("service.server.main", "run the gRPC inference service"),
    "profile": ("service.memory.cli", "profile memory for a config and print the plan record"),
    "generate": ("service.client", "send a prompt to a running server"),
    "chat": ("service.chat_client", "chat with a running server (interactive, or one message)"),
    "run": ("service.engine.cli", "generate in-process, without a server"),
    "controller": ("controller.main", "run the plan controller"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """Only the chosen subcommand's module is imported, so one command's imports never slow another."""
    parser = argparse.ArgumentParser(prog="kvmemo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if argv and argv[0] == name:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    return args._module.main(args) or 0


if __name__ == "__main__":
    sys.exit(main())

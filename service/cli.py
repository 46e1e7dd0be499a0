"""The `kvmemo` console script. Each subcommand lives in its own module, which exposes
`add_arguments(parser)` and `main(args) -> int`; heavy imports stay inside `main`."""

import argparse
import importlib
import sys
from importlib.metadata import PackageNotFoundError, version

# Wrapped for an 80-column terminal (RawDescriptionHelpFormatter keeps the paragraphs as written).
DESCRIPTION = """\
kvmemo serves Llama-family language models (Llama 2/3, Qwen2, Qwen3) over
gRPC: its own API, KServe v2 and Triton's. On a first boot it measures where
GPU (or host) memory goes, sizes its paged KV cache from that measurement and
keeps the result as a plan, so later boots with the same settings skip
profiling.

Start a server with `kvmemo serve`, then send it a prompt with
`kvmemo generate "Once upon a time"`; `kvmemo run "Once upon a time"`
generates in this process, without a server."""

EPILOG = """\
`kvmemo COMMAND --help` lists a command's flags; every engine and server flag
also reads the environment variable KVMEMO_<FLAG>. More to read: README.md
(the API, how the KV cache is sized, Kubernetes, benchmarks) and
docs/kubernetes.md in the source tree."""


SUBCOMMANDS = {
    "serve": ("service.commands.serve", "run the gRPC inference service"),
    "profile": ("service.commands.profile", "profile memory for a config and print the plan (kept only with --save)"),
    "generate": ("service.commands.generate", "send a prompt to a running server"),
    "chat": ("service.commands.chat", "chat with a running server (interactive, or one message)"),
    "run": ("service.commands.run", "generate in-process, without a server"),
    "controller": ("controller.main", "run the plan controller"),
}


def installed_version() -> str:
    try:
        return version("kvmemo")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """Only the chosen subcommand's module is imported, so one command's imports never slow another."""
    parser = argparse.ArgumentParser(prog="kvmemo", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"kvmemo {installed_version()}",
                        help="print kvmemo's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND",
                                help="one of these; `kvmemo COMMAND --help` for its flags")
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

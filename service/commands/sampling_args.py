"""The sampling flags of `kvmemo generate` and `kvmemo run`: one name and one default each, the same defaults
the server applies to a field a request leaves unset (service/engine/sampling_params.py)."""

import argparse

from service.engine.sampling_params import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P

SAMPLING_FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "seed")


def add_prompt_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the prompt text; `-` reads it from standard input, `@path` from a UTF-8 file "
                                       "(for prompts longer than the shell's argument limit)")


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                       help="most tokens to generate (default: %(default)s)")
    group.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                       help="0 is greedy, which loops on small models; the default stays close to the likeliest text "
                            "without looping (default: %(default)s)")
    group.add_argument("--top-p", type=float, default=DEFAULT_TOP_P,
                       help="sample from the smallest set of tokens whose probabilities add up to this, in (0, 1]; "
                            "1 is off (default: %(default)s)")
    group.add_argument("--top-k", type=int, default=DEFAULT_TOP_K,
                       help="sample from the k likeliest tokens; 0 is off (default: %(default)s)")
    group.add_argument("--seed", type=int, default=None,
                       help="sampling seed: the same seed and prompt give the same text (default: a new draw each time)")

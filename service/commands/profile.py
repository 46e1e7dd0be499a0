"""`kvmemo profile [--json] [--save]`: load the weights, profile memory for a config and print the plan record.
Only with --save is it kept in the file plan store (so that the next `kvmemo serve` with the same config skips
profiling): a look at the numbers must not replace the plan a running server booted from."""

import argparse
import json
import logging
import sys

from service.commands.engine_args import add_engine_arguments, engine_config_from_args
from service.errors import ConfigError, ModelLoadError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the plan record as JSON")
    parser.add_argument("--save", action="store_true",
                        help="also write the plan into the file plan store (--plan-dir), where the next `kvmemo serve` "
                             "with this config finds it; without --save nothing is written")
    add_engine_arguments(parser)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if not args.json else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from service.boot import load_and_fingerprint
    from service.plans import open_plans
    from service.plans.file import FilePlans
    from service.memory.planner import kv_ceiling, plan_log_line, profile_record

    try:
        config = engine_config_from_args(args)
        store = open_plans(config)
        if args.save and not isinstance(store, FilePlans):
            raise ConfigError(f"--save writes to the file plan store, but plan_store={config.plan_store!r}"
                              f"{' with a ConfigMap' if config.configmap_name else ''} has none; use --plan-store file")
        loaded = load_and_fingerprint(config)
    except (ConfigError, ModelLoadError) as e:
        print(f"kvmemo profile: {e}", file=sys.stderr)
        return 2
    record = profile_record(config, loaded.runner, loaded.baseline, loaded.weights, loaded.fingerprint)
    if args.save:
        print(f"plan record written to {store.save(record)}", file=sys.stderr)
    if args.json:
        print(json.dumps(record.to_json(), indent=2, sort_keys=True))
    else:
        ceiling, _ = kv_ceiling(loaded.runner.layout, loaded.runner.device.type)
        kv = min(record.suggestions.for_policy(config.kv_cache_policy), ceiling)
        print(plan_log_line(record, kv, loaded.runner))
    return 0

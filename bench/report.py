"""Builds the README's benchmark tables from bench/results/*.json, between the markers
`<!-- bench:NAME -->` and `<!-- /bench:NAME -->`. Run after committing new results:

    python3 bench/report.py            # rewrite README.md
    python3 bench/report.py --check    # exit 1 when README.md is out of date (a test runs this)
"""

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MiB = 1 << 20


def load(prefix: str) -> list[tuple[str, dict]]:
    return [(p.name, json.loads(p.read_text())) for p in sorted(RESULTS.glob(f"{prefix}-*.json"))]


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(x, digits=0, scale=1.0):
    return "n/a" if x is None else f"{x * scale:,.{digits}f}"


def throughput() -> str:
    rows = []
    for name, data in load("throughput"):
        for r in data["rows"]:
            rows.append([r["device"], r["model"], r["workload"], f'{r["requests"]} × {r["prompt_tokens"]}/{r["output_tokens_each"]}',
                         fmt(r["output_tokens_per_s"]), fmt(r.get("peer_output_tokens_per_s")),
                         fmt(r["decode_step_ms"], 2), f'{fmt(r["achieved_gb_s"])} / {fmt(r["device_bandwidth_gb_s"])}',
                         fmt(r["peak_memory_bytes"], 1, 1 / (1 << 30)),
                         fmt(r.get("graph_speedup"), 2) + ("×" if r.get("graph_speedup") else ""), name])
    return table(["device", "model", "workload", "requests × prompt/output", "kvmemo tok/s",
                  "transformers tok/s", "decode step ms", "achieved / copy GB/s", "peak GiB",
                  "CUDA graphs vs eager", "results"], rows)


def memory() -> str:
    rows = []
    for name, data in load("memory"):
        for r in data["rows"]:
            if "error" in r:
                rows.append([r["device"], r["model"], "on" if r["cudagraphs"] else "off", r["error"]] + [""] * 8 + [name])
                continue
            rows.append([r["device"], r["model"], "on" if r["cudagraphs"] else "off",
                         fmt(r["prediction_error_bytes"], 0, 1 / MiB), fmt(r["prediction_error_after_run_bytes"], 0, 1 / MiB),
                         f'{r["ooms"]} in {r["soak_seconds"]:.0f} s', fmt(r["peak_used_ratio"], 2, 100) + "%",
                         fmt(r["cold_ready_s"], 1), fmt(r["warm_ready_s"], 1), fmt(r["warm_ready_s"] / r["cold_ready_s"], 2),
                         fmt(r["profile_s"], 1), r["warm_plan_source"], name])
    return table(["device", "model", "graphs", "error after capture MiB", "error after soak MiB", "OOMs",
                  "peak used", "cold ready s", "warm ready s", "warm/cold", "profile s", "warm plan", "results"], rows)


def attention() -> str:
    rows = []
    for name, data in load("attention-kernel"):
        for c in data["cases"]:
            if c["table_blocks"] * data["block_size"] == c["context"] or c["batch"] in (1, 256):
                rows.append([data["device"], c["batch"], c["context"], c["table_blocks"], c["num_splits"],
                             fmt(c["kernel_us"], 1), fmt(c["kernel_gbps"]), fmt(c["fraction_of_peak"], 0, 100) + "%",
                             fmt(c["sdpa_contiguous_us"], 1), name])
    return table(["device", "batch", "context", "table blocks", "splits", "kernel µs", "GB/s", "of peak",
                  "SDPA (contiguous) µs", "results"], rows)


def grpc_overhead() -> str:
    rows = [[d["device"], d["streams"], fmt(d["in_process"]["tokens_per_s"]), fmt(d["grpc"]["tokens_per_s"]),
             fmt(d["tokens_per_s_ratio"], 2), fmt(d["added_ttft_p50_s"], 0, 1000), fmt(d["added_ttft_p99_s"], 0, 1000),
             " ".join(f"{x:.1f}" for x in d.get("load_average_before", [])[:1]) or "n/a", name]
            for name, d in load("grpc_overhead")]
    return table(["device", "streams", "in-process tok/s", "gRPC tok/s", "ratio", "added TTFT p50 ms",
                  "added TTFT p99 ms", "load average", "results"], rows)


def controller() -> str:
    rows = [[d["device"], d["reports"], d["pods"], fmt(d["report_to_plan_p50_ms"], 1), fmt(d["report_to_plan_p99_ms"], 1),
             fmt(d.get("reconciles_per_burst")),
             f'{d["annotation_bytes_100_fingerprints"]:,} of {d["annotation_limit_bytes"]:,}', name]
            for name, d in load("controller")]
    return table(["device", "reports", "pods", "report→plan p50 ms", "p99 ms", "reconciles per 100-report burst",
                  "annotation bytes, 100 fingerprints", "results"], rows)


SECTIONS = {"throughput": throughput, "memory": memory, "attention": attention, "grpc": grpc_overhead,
            "controller": controller}


def render(readme: str) -> str:
    for name, build in SECTIONS.items():
        pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
        readme = pattern.sub(lambda m: m.group(1) + build() + "\n" + m.group(2), readme)
    return readme


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    path = ROOT / "README.md"
    current = path.read_text()
    wanted = render(current)
    if args.check:
        if wanted != current:
            print("README.md's benchmark tables are out of date: run python3 bench/report.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())

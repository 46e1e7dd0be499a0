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


def gpt_fast_cell(row: dict) -> str:
    step = (row.get("gpt_fast_peer") or {}).get("decode_step_ms")
    return fmt(row.get("gpt_fast_output_tokens_per_s")) + (f" ({fmt(step, 2)})" if step else "")


def throughput() -> str:
    rows = []
    for name, data in load("throughput"):
        for r in data["rows"]:
            rows.append([r["device"], r["model"], r["workload"], f'{r["requests"]} × {r["prompt_tokens"]}/{r["output_tokens_each"]}',
                         fmt(r["output_tokens_per_s"]), fmt(r.get("peer_output_tokens_per_s")),
                         gpt_fast_cell(r),
                         fmt(r.get("vs_gpt_fast"), 2) + ("×" if r.get("vs_gpt_fast") else ""),
                         fmt(r["decode_step_ms"], 2), f'{fmt(r["achieved_gb_s"])} / {fmt(r["device_bandwidth_gb_s"])}',
                         fmt(r["peak_memory_bytes"], 1, 1 / (1 << 30)),
                         fmt(r.get("graph_speedup"), 2) + ("×" if r.get("graph_speedup") else ""), name])
    return table(["device", "model", "workload", "requests × prompt/output", "kvmemo tok/s",
                  "transformers tok/s", "gpt-fast tok/s (step ms)", "vs gpt-fast", "decode step ms", "achieved / copy GB/s", "peak GiB",
                  "CUDA graphs vs eager", "results"], rows)


def step_breakdown() -> str:
    rows = []
    for name, d in load("step-breakdown"):
        for r in d["rows"]:
            c = r["category_ms"]
            rows.append([d["device"], d["model"], "on" if d["fused_kernels"] else "off",
                         "on" if d["async_scheduling"] else "off", r["batch"], fmt(r["mean_context_tokens"]),
                         fmt(r["wall_step_ms"], 2), fmt(r["gpu_busy_ms"], 2), fmt(c.get("gemm"), 2),
                         fmt(c.get("attention"), 2), fmt(c.get("elementwise_other"), 2), fmt(c.get("sampler"), 2),
                         fmt(c.get("copies"), 2), fmt(r["host_gap_ms"], 2), fmt(r["kernels_per_step"]), name])
    return table(["device", "model", "fused kernels", "async scheduling", "batch", "context", "wall step ms",
                  "GPU busy ms", "GEMMs", "attention", "elementwise/other", "sampler", "copies", "host gap ms",
                  "kernels a step", "results"], rows)


def prefill() -> str:
    rows = []
    for name, d in load("throughput"):
        p = d.get("prefill")
        if not p:
            continue
        peak = d.get("matmul_peak_tflop_s")
        rows.append([d["rows"][0]["device"], d["rows"][0]["model"], "on" if d["rows"][0]["fused_kernels"] else "off",
                     f'{p["requests"]} × {p["prompt_tokens"]}', fmt(p["prefill_tokens_per_s"]),
                     fmt(p["prefill_tflop_s"]), fmt(peak), fmt(p["prefill_tflop_s"] / peak * 100 if peak else None) + "%",
                     name])
    return table(["device", "model", "fused kernels", "prompts", "prefill tok/s", "TFLOP/s", "bf16 matmul peak TFLOP/s",
                  "of peak", "results"], rows)


def prefill_chunks() -> str:
    """bench/prefill.py: throughput at each chunk size (max_num_batched_tokens)."""
    rows = []
    for name, d in load("prefill"):
        for c in d["chunks"]:
            rows.append([d["device"], d["model"], fmt(c["chunk_tokens"]), f'{c["requests"]} × {c["prompt_tokens"]}',
                         fmt(c["prefill_tokens_per_s"]), fmt(c["prefill_tflop_s"]),
                         fmt(c["fraction_of_matmul_peak"], 0, 100) + "%", fmt(c["median_step_ms"], 1), name])
    return table(["device", "model", "chunk tokens", "prompts", "prefill tok/s", "TFLOP/s", "of matmul peak",
                  "median step ms", "results"], rows)


def prefill_kernel() -> str:
    """bench/prefill.py: the Triton paged prefill kernel against SDPA on contiguous K/V, same shapes."""
    rows = []
    for name, d in load("prefill"):
        for k in d.get("kernel", []):
            rows.append([d["device"], k["seqs"], fmt(k["new_tokens"]), fmt(k["cached_tokens"]),
                         fmt(k["kernel_ms"], 3), fmt(k["sdpa_contiguous_ms"], 3), fmt(k["kernel_over_sdpa"], 2) + "×",
                         fmt(k["kernel_tflop_s"]), fmt(k["sdpa_tflop_s"]), name])
    return table(["device", "sequences", "new tokens each", "cached tokens each", "kernel ms", "SDPA ms",
                  "kernel / SDPA", "kernel TFLOP/s", "SDPA TFLOP/s", "results"], rows)


def model_label(model: str) -> str:
    """A preset's name; a Hugging Face directory by its name, marked as real weight files."""
    return f"{Path(model).name} (safetensors)" if "/" in model else model


def memory() -> str:
    """Old rows (before the kernel cache) booted every process with an empty Triton cache: their warm boot is
    a new pod's; a restarted container's boot and the profile spread were not measured then."""
    rows = []
    for name, data in load("memory"):
        for r in data["rows"]:
            graphs = "on" if r["cudagraphs"] else "off"
            if "error" in r:
                rows.append([r["device"], model_label(r["model"]), graphs, r["error"]] + [""] * 13 + [name])
                continue
            soaked = r.get("soak_seconds") or 0
            new_pod = r.get("new_pod_ready_s", r.get("warm_ready_s"))
            restart = r.get("restart_ready_s")
            compiled = (r.get("kernels_compiled") or {}).get("restart")
            growth = r.get("soak_memory")
            growth = (f'{fmt(growth["peak_reserved_growth_bytes"], 0, 1 / MiB)} / '
                      f'{fmt(growth["peak_non_torch_growth_bytes"], 0, 1 / MiB)}') if growth else "n/a"
            rows.append([r["device"], model_label(r["model"]), graphs,
                         fmt(r["prediction_error_bytes"], 0, 1 / MiB),
                         fmt(r["prediction_error_after_run_bytes"], 0, 1 / MiB) if soaked else "no soak",
                         fmt(r.get("margin_bytes"), 0, 1 / MiB),
                         f'{r["ooms"]} in {soaked:.0f} s' if soaked else "no soak", growth,
                         fmt(r["peak_used_ratio"], 2, 100) + "%" if soaked else "no soak",
                         fmt(r["cold_ready_s"], 1), fmt(restart, 1),
                         fmt(restart / r["cold_ready_s"] if restart else None, 2), fmt(compiled),
                         fmt(new_pod, 1), fmt(r["profile_s"], 1), fmt(r.get("profile_spread_bytes"), 0, 1 / MiB),
                         r.get("warm_plan_source") or "n/a", name])
    return table(["device", "model", "graphs", "error after capture MiB", "error after soak MiB", "margin MiB",
                  "OOMs", "soak growth MiB: allocator / outside it", "peak used", "cold ready s", "restart ready s", "restart/cold", "restart compiled",
                  "new pod ready s", "profile s", "profile spread MiB", "warm plan", "results"], rows)


def load_bench() -> str:
    rows = []
    for name, d in load("load"):
        p, c = d["random_preset"], d.get("checkpoint")
        rows.append([d["device"], f'{d["preset"]} random', fmt(p["weights_bytes"] / 1e9, 1), "",
                     f'{fmt(p["seconds"]["generate"], 2)} s (kernel compiled: {fmt(p["first_seconds"]["generate"], 2)} s)',
                     f'{fmt(p["torch_path_generate_seconds"], 2)} s (torch ops)', name])
        if c:
            rows.append([d["device"], f'{d["preset"]}-shaped safetensors, page cache dropped',
                         fmt(c["file_bytes"] / 1e9, 1), fmt(c["raw_read_cold_gb_s"], 2),
                         f'{fmt(c["ours_cold"]["read_gb_s"], 2)} GB/s ({fmt(c["ours_cold"]["read_gb_s"] / c["raw_read_cold_gb_s"], 0, 100)}% of raw)',
                         "n/a", name])
            rows.append([d["device"], f'{d["preset"]}-shaped safetensors, page cache warm',
                         fmt(c["file_bytes"] / 1e9, 1), fmt(c["raw_read_warm_gb_s"], 2),
                         f'{fmt(c["ours_warm"]["read_gb_s"], 1)} GB/s', f'{fmt(c["library_warm"]["gb_s"], 1)} GB/s '
                         f'(safetensors load_file)', name])
    return table(["device", "weights", "GB", "raw sequential read GB/s", "kvmemo", "before / reference", "results"],
                 rows)


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


def serving() -> str:
    """Per offered rate, the in-process engine's row beside the gRPC server's; "all at once" is saturation."""
    rows = []
    for name, d in load("serving"):
        sides = [(label, [d[side]["saturation"], *d[side]["rates"]]) for label, side in
                 (("in-process", "in_process"), ("gRPC", "grpc"))]
        for i in range(len(sides[0][1])):
            for label, side_rows in sides:
                r = side_rows[i]
                rows.append([d["device"], d["model"], fmt(r["offered_requests_per_s"], 1) if r["offered_requests_per_s"]
                             else "all at once", label, fmt(r["requests_per_s"], 1), fmt(r["output_tokens_per_s"]),
                             *(f'{fmt(r[k]["p50_ms"], 1 if k == "itl" else 0)} / {fmt(r[k]["p99_ms"], 1 if k == "itl" else 0)}'
                               for k in ("ttft", "itl", "e2e")), name])
    return table(["device", "model", "offered req/s", "path", "achieved req/s", "output tok/s", "TTFT p50 / p99 ms",
                  "ITL p50 / p99 ms", "E2E p50 / p99 ms", "results"], rows)


def controller() -> str:
    rows = [[d["device"], d["reports"], d["pods"], fmt(d["report_to_plan_p50_ms"], 1), fmt(d["report_to_plan_p99_ms"], 1),
             fmt(d.get("reconciles_per_burst")),
             f'{d["annotation_bytes_100_fingerprints"]:,} of {d["annotation_limit_bytes"]:,}', name]
            for name, d in load("controller") if "flood" not in d]
    return table(["device", "reports", "pods", "report→plan p50 ms", "p99 ms", "reconciles per 100-report burst",
                  "annotation bytes, 100 fingerprints", "results"], rows)


def controller_flood() -> str:
    rows = [[d["device"], f'{f["junk_annotations"]:,}', f'{f["junk_writes"]:,}', f["reports"],
             fmt(f["report_to_plan_p50_ms"]), fmt(f["report_to_plan_max_ms"]),
             f'{f["report_rejected_event_objects"]} ({f["report_rejected_event_count"]:,} counted)',
             fmt(f["controller_reconcile_mean_ms"], 1), fmt(f["apiserver_patch_p50_ms_after_flood"]), name]
            for name, d in load("controller") if "flood" in d for f in [d["flood"]]]
    return table(["device", "junk report annotations", "junk rewrites", "real reports", "report→plan p50 ms", "max ms",
                  "ReportRejected Events", "reconcile ms (mean)", "one apiserver PATCH ms", "results"], rows)


SECTIONS = {"throughput": throughput, "memory": memory, "load": load_bench, "attention": attention, "grpc": grpc_overhead,
            "serving": serving, "controller": controller,
            "controller_flood": controller_flood, "step_breakdown": step_breakdown, "prefill": prefill,
            "prefill_chunks": prefill_chunks, "prefill_kernel": prefill_kernel}


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

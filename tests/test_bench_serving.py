"""bench/serving.py's whole code path on CPU with `tiny`: a real `kvmemo serve` and the in-process engine get
the same seeded Poisson arrivals, and the results JSON holds every field the README table reads. No timing
assertions: the numbers themselves are the bench's business."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LATENCIES = ("ttft", "itl", "e2e")


def test_the_serving_bench_writes_every_field(tmp_path):
    out = tmp_path / "serving.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "serving.py"), "--model", "tiny", "--device", "cpu",
                    "--requests", "6", "--input-median", "20", "--input-max", "48", "--output-min", "4",
                    "--output-max", "12", "--max-num-seqs", "8", "--max-num-batched-tokens", "256",
                    "--rate-fractions", "0.5,1.0,2.0", "--out", str(out)], check=True, timeout=600)
    result = json.loads(out.read_text())
    for field in ("device", "torch", "command", "commit", "date", "model", "prompt_lengths", "output_lengths",
                  "arrivals", "requests_per_rate"):
        assert field in result, field
    for side in ("in_process", "grpc"):
        rows = [result[side]["saturation"], *result[side]["rates"]]
        assert len(result[side]["rates"]) == 3
        for row in rows:
            assert row["requests"] == 6 and row["output_tokens"] > 0
            for name in ("output_tokens_per_s", "requests_per_s", "seconds"):
                assert row[name] > 0, (side, name)
            for name in LATENCIES:
                assert row[name]["p50_ms"] is not None and row[name]["p99_ms"] >= row[name]["p50_ms"], (side, name)
    offered = [[r["offered_requests_per_s"] for r in result[side]["rates"]] for side in ("in_process", "grpc")]
    assert offered[0] == offered[1]
    # ignore_eos and greedy: both sides generate exactly the requested lengths.
    assert result["in_process"]["saturation"]["output_tokens"] == result["grpc"]["saturation"]["output_tokens"] \
        == result["output_lengths"]["total"]

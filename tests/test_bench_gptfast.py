"""bench/throughput.py's gpt-fast peer on CPU: gpt-fast's own model and decode loop from the fetched
.peers/gpt-fast (a two-layer model, not compiled) through the same subprocess path the GPU run takes, and
the row and README cell built from its JSON. CI has no fetched peer: those tests skip there. No timing
assertions: the numbers themselves are the bench's business."""

from pathlib import Path

import pytest

from bench.report import gpt_fast_cell
from bench.throughput import run_gpt_fast, with_gpt_fast

PEER_DIR = Path(__file__).resolve().parent.parent / ".peers" / "gpt-fast"
fetched = pytest.mark.skipif(not (PEER_DIR / "model.py").is_file(), reason="gpt-fast is not fetched into .peers/")


@fetched
def test_the_gpt_fast_peer_runs_its_decode_loop_and_names_its_commit():
    peer = run_gpt_fast("llama-3-8b", 600, PEER_DIR, ["--tiny-cpu-smoke", "--scale", "0.02", "--samples", "1"])
    assert "error" not in peer, peer["error"]
    assert peer["commit"] == (PEER_DIR / "COMMIT").read_text().strip()
    assert (peer["prompt_tokens"], peer["output_tokens"], peer["compiled"]) == (2, 10, False)
    for name in ("output_tokens_per_s", "decode_step_ms", "compile_seconds", "achieved_gb_s", "weight_bytes"):
        assert peer[name] > 0, name
    row = with_gpt_fast({"output_tokens_per_s": 2 * peer["output_tokens_per_s"]}, peer)
    assert row["vs_gpt_fast"] == pytest.approx(2.0)
    assert gpt_fast_cell(row).endswith(f" ({peer['decode_step_ms']:,.2f})")


def test_a_missing_peer_is_an_error_in_the_row_not_a_crash(tmp_path):
    peer = run_gpt_fast("llama-3-8b", 600, tmp_path, [])
    assert str(tmp_path) in peer["error"]
    row = with_gpt_fast({"output_tokens_per_s": 100.0}, peer)
    assert row["gpt_fast_output_tokens_per_s"] is None and row["vs_gpt_fast"] is None
    assert gpt_fast_cell(row) == "n/a"

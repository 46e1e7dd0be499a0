"""Compiling the Triton kernels a boot will launch while its weights load. On an H200 with an empty kernel cache,
Llama-3-8B's first profiling step took 4.0 s, against 0.23 s once its kernels were compiled and loaded: Triton
compiled six kernels there and built a launcher for each with the C compiler. So, in a thread beside the
loader, a one-layer copy of the model runs the kinds of step that profiling and the CUDA graphs run. The copy
has the real layer's shapes (Triton specialises a kernel on its arguments' dtypes, alignments and integer
values, all of which one layer fixes), a small vocabulary and weights that are never written: its outputs are
garbage, and nothing reads them. The compiled kernels stay in Triton's in-process cache and on disk.

It runs only when it pays (pays_beside_load): when the kernel cache starts empty (from a filled cache each
kernel loads in milliseconds, and the thread's Python work would only slow the loader down: a restarted H200
boot's weights took 2.3 s beside it instead of 0.7 s), and with CUDA graphs on. In eager H200 boots it cost
70-80 MiB of device memory outside the allocator, so that two cold profiles of one configuration, one of them
from a filled cache, disagreed by that much. By all the evidence that is its CUDA stream's: with graphs, whose
capture stream costs the same, the total stayed the same to the MiB."""

import dataclasses
import logging
import threading
import time

import torch

from service.config import EngineConfig
from service.model.loader import LoadedModel, read_model_config, uninitialised_model

log = logging.getLogger(__name__)

WARM_UP_VOCAB = 256  # no Triton kernel depends on the vocabulary; the embedding and the LM head only grow
WARM_UP_PREFILL_TOKENS = 16


def one_layer_runner(config: EngineConfig, device: torch.device):
    """A ModelRunner over an uninitialised one-layer copy of config.model, without a KV cache."""
    from service.engine.model_runner import ModelRunner, resolve_dtype

    model_config = dataclasses.replace(read_model_config(config.model), num_hidden_layers=1,
                                       vocab_size=WARM_UP_VOCAB, tie_word_embeddings=False)
    model = uninitialised_model(model_config, device, resolve_dtype(config.dtype, device))
    return ModelRunner(config, LoadedModel(model, model_config, None, config.model, {}))


def run_small_steps(runner) -> None:
    """A mixed step (a short prefill beside every other seat decoding: the decode kernel's one-split variant
    when the batch is large enough) and a one-sequence decode (its split variant and their reduction), each
    through a block table as wide as max_model_len, as profiling and the CUDA graphs launch them."""
    layout = runner.layout
    runner.allocate_kv_cache(layout.max_blocks_per_seq + 2)  # the null block, the prefill's, one full table
    try:
        runner.dummy_run([max(1, min(WARM_UP_PREFILL_TOKENS, layout.max_model_len - 1))],
                         max(0, layout.max_num_seqs - 1))
        runner.dummy_run([], 1)
        if runner.device.type == "cuda":
            torch.cuda.current_stream(runner.device).synchronize()
    finally:
        runner.free_kv_cache()


def pays_beside_load(config: EngineConfig, kernel_cache_entries: int | None) -> bool:
    """kernel_cache_entries: what the kernel cache held at the start of the boot (None: no cache, on a CPU)."""
    return kernel_cache_entries == 0 and not config.enforce_eager


class KernelWarmUp:
    """start() begins compiling in a thread; wait() joins it and releases what it held."""

    def __init__(self, config: EngineConfig, device: torch.device):
        self.config, self.device = config, device
        self.seconds = 0.0  # how long the warm-up itself ran
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, name="kernel-warm-up", daemon=True)

    @classmethod
    def start(cls, config: EngineConfig, device: torch.device) -> "KernelWarmUp":
        warm_up = cls(config, device)
        warm_up.thread.start()
        return warm_up

    def _run(self) -> None:
        start = time.perf_counter()
        try:
            if self.device.type != "cuda":
                run_small_steps(one_layer_runner(self.config, self.device))
            else:
                torch.cuda.set_device(self.device)  # the current device is per thread
                # A stream of its own, so that its blocks come from segments of their own: on the loader's
                # stream they fell between the weights, and the holes they left stayed reserved (100 MiB more
                # non-KV memory than profiling saw, on an H200 with Llama-3-8B).
                with torch.cuda.stream(torch.cuda.Stream(self.device)):
                    run_small_steps(one_layer_runner(self.config, self.device))
        except Exception as e:  # noqa: BLE001 -- only a head start: profiling compiles whatever is missing
            self.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        self.seconds = time.perf_counter() - start

    def wait(self) -> float:
        """Joins the thread; returns the seconds spent waiting for it."""
        start = time.perf_counter()
        self.thread.join()
        waited = time.perf_counter() - start
        # The thread's cuBLAS handle keeps a workspace in the caching allocator: the weights must not count it.
        clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
        if clear_workspaces is not None:
            clear_workspaces()
        if self.error:
            log.warning("compiling kernels during the load failed (%s); profiling compiles them instead", self.error)
        else:
            log.info("kernel warm-up beside the load took %.2f s, %.2f s of it after the load", self.seconds, waited)
        return waited

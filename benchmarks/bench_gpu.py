"""Benchmark 5, GPU: prefill and decoding on an LLaVA-NeXT-7B-shaped language model.

The language model of LLaVA-NeXT-7B (llava-v1.6-vicuna-7b: Vicuna-7B, i.e. the
Llama-2-7B shape: hidden 4096, 32 layers, 32 query / 32 KV heads, head dim 128,
MLP 11008, vocabulary 32064, RoPE theta 10000) is built from a
``transformers.LlamaConfig`` directly on the device in bfloat16, with
transformers' own random initialisation (normal, std 0.02): nothing is
downloaded, so it runs on a machine without network. The vision tower is left
out: with text token ids it would not run, and ZipVL patches the language model
only (attention and KV cache are all that differ between the variants).

**Random weights give no real sparsity**: the attention of a random model is
close to uniform, so ZipVL's adaptive budget (``tau``) would keep nearly every
token. The kept ratio is therefore *fixed* at 30% (the ``FixedRatio`` strategy,
the paper's fixed-ratio ablation; tokens still ranked by ZipVL's probes). These
are speed and memory figures only; fidelity is measured on a trained model by
``bench_fidelity``.

Prefill (batch 1, random token ids, seeded): time to first token, one forward
with ``logits_to_keep=1`` and ``use_cache=True`` plus the argmax, CUDA
synchronised before and after. Variants: dense (the unpatched model, SDPA,
``DynamicCache``) and ZipVL at the fixed ratio with prefill ``qkv``,
``kv_local`` (window 128) and ``dense`` (compression only). Per length one
untimed warm-up run per variant (it also records the kept positions for the
FLOP counts), then ``--repeats`` repetitions with all variants interleaved;
the median is reported, with the speed-up against dense, the peak GPU memory
(``torch.cuda.max_memory_allocated``, reset before each run) and
``zipvl.stats`` (kept ratio, cache bytes).

FLOPs: per length, the linear layers' and dense attention's FLOPs
(``instrument.Shape``), the attention share and the speed-up ceiling if
attention were free; per variant the FLOPs it must do (``bench_prefill.flops_of``)
and the floor time at the measured matmul peak of this device.

Decoding: per context, one prefill at batch 1 per method (dense, and ZipVL at the
fixed ratio with ``--decode-prefill``, default ``kv_local``), the cache copied
and repeated to batch ``B`` (as ``bench_decode``), then warm-up steps and
``--steps`` timed greedy steps, synchronised at both ends of the timed window:
tokens/s = ``B x steps / seconds``. A cell whose cache would not fit the free
device memory (estimate: bytes per sample x ``B`` + ``--memory-margin-gib``) is
recorded as skipped instead of run; the dense estimate is
``2 x layers x Hk x d x 2 B x context`` per sample.

The JSON records the machine (GPU name, memory, multiprocessors, compute
capability, CUDA / cuDNN / driver versions, ``nvidia-smi``'s line) and whether
flash-attn was importable (ZipVL's ``backend="auto"`` uses it for the ``qkv``
and ``dense`` prefills and for decoding when it is, torch SDPA otherwise).

    python -m benchmarks.bench_gpu            # 4K-32K prefill, 4K-16K x batch 1/8 decoding
    python -m benchmarks.bench_gpu --quick    # 4K and 8K prefill, one repetition; 4K decoding
    # CPU smoke run of the whole script on a tiny shape:
    python -m benchmarks.bench_gpu --device cpu --quick --name gpu-smoke --layers 2 \\
        --hidden 256 --heads 4 --kv-heads 4 --intermediate 512 --lengths 512 1024 \\
        --decode-lengths 512 --batches 1 2 --repeats 1 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.metadata
import importlib.util
import statistics
import subprocess
import time
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import zipvl
from benchmarks import peers
from benchmarks.bench_decode import prefill as decode_prefill
from benchmarks.bench_prefill import first_token, flops_of
from benchmarks.common import add_threads_option, apply_threads, log, write_partial, write_result
from benchmarks.instrument import Shape, dense_pairs
from zipvl.backends.flash import flash_attention_available

GIB = 1024 ** 3
FULL_LENGTHS = (4096, 8192, 16384, 32768)
QUICK_LENGTHS = (4096, 8192)
FULL_DECODE_LENGTHS = (4096, 8192, 16384)
QUICK_DECODE_LENGTHS = (4096,)
BATCHES = (1, 8)
RATIO = 0.3
LOCAL_WINDOW = 128
PREFILL_MODES = ("qkv", "kv_local", "dense")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# LLaVA-NeXT-7B's language model (llava-v1.6-vicuna-7b: Vicuna-7B = the Llama-2-7B shape).
LLAVA_NEXT_7B = {"vocab_size": 32064, "hidden_size": 4096, "num_hidden_layers": 32,
                 "num_attention_heads": 32, "num_key_value_heads": 32,
                 "intermediate_size": 11008, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}
RANDOM_WEIGHTS_NOTE = (
    "random weights (transformers' init: normal, std 0.02): the attention of a random model "
    "is near uniform, so it has no real sparsity and ZipVL's adaptive budget would keep almost "
    "every token; the kept ratio is FIXED (the FixedRatio strategy, the paper's fixed-ratio "
    "ablation), not adaptive. Speed and memory only; no fidelity.")


# ---- the device -------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def release(device: torch.device, empty_cache: bool = True) -> None:
    """Drop what the last run left; ``empty_cache=False`` between timed runs, so that no
    run pays for ``cudaMalloc`` of blocks the previous one gave back."""
    gc.collect()
    if empty_cache and device.type == "cuda":
        torch.cuda.empty_cache()


def available_bytes(device: torch.device) -> int:
    """Memory a new allocation can still get: free device memory plus what torch's caching
    allocator holds unused (CPU: ``MemAvailable``)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    with open("/proc/meminfo", encoding="utf-8") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _size(value: int | None) -> str:
    if not value:
        return "n/a"
    return f"{value / GIB:.2f} GiB" if value >= GIB else f"{value / 2 ** 20:.1f} MiB"


def _nvidia_smi() -> str | None:
    query = "name,driver_version,memory.total,clocks.max.sm,power.limit"
    try:
        result = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                                capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def device_facts(device: torch.device) -> dict[str, Any]:
    """The accelerator: name, memory, versions, and whether flash-attn is importable."""
    facts: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "flash_attn_importable": importlib.util.find_spec("flash_attn") is not None,
        "flash_attn_version": _version("flash-attn") or _version("flash_attn"),
        "zipvl_uses_flash": flash_attention_available() and device.type == "cuda",
    }
    if device.type != "cuda":
        return facts
    props = torch.cuda.get_device_properties(device)
    driver = getattr(torch._C, "_cuda_getDriverVersion", None)
    facts.update({
        "gpu": props.name,
        "gpu_memory_bytes": props.total_memory,
        "multiprocessors": props.multi_processor_count,
        "compute_capability": f"{props.major}.{props.minor}",
        "cudnn": torch.backends.cudnn.version(),
        # The CUDA version the driver supports (e.g. 13000), from the CUDA driver API.
        "cuda_driver_api_version": driver() if driver is not None else None,
        "nvidia_smi": _nvidia_smi(),
    })
    return facts


@torch.inference_mode()
def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, repeats: int = 10) -> float:
    """Measured matmul throughput in the model's dtype: the compute peak for the floor times."""
    size = 8192 if device.type == "cuda" else 512
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    for _ in range(3):
        torch.mm(a, b)
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    sync(device)
    seconds = (time.perf_counter() - start) / repeats
    return 2 * size ** 3 / seconds / 1e12


# ---- the model --------------------------------------------------------------------------


def model_config(args: argparse.Namespace, max_positions: int) -> LlamaConfig:
    shape = dict(LLAVA_NEXT_7B)
    for field, value in (("hidden_size", args.hidden), ("num_hidden_layers", args.layers),
                         ("num_attention_heads", args.heads),
                         ("num_key_value_heads", args.kv_heads),
                         ("intermediate_size", args.intermediate), ("vocab_size", args.vocab)):
        if value is not None:
            shape[field] = value
    rope_theta = shape.pop("rope_theta")
    return LlamaConfig(**shape, max_position_embeddings=max_positions,
                       rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
                       tie_word_embeddings=False, use_cache=True)


def build_model(config: LlamaConfig, device: torch.device, dtype: torch.dtype,
                seed: int) -> LlamaForCausalLM:
    """Random-weight model built on ``device`` in ``dtype`` (never materialised elsewhere)."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def random_ids(length: int, vocab: int, seed: int, device: torch.device,
               batch: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed + length)
    return torch.randint(0, vocab, (batch, length), generator=generator).to(device)


def dense_cache_bytes(shape: Shape, tokens: int, element_size: int) -> int:
    """K and V of every layer for ``tokens`` tokens of one sample."""
    return 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * element_size * tokens


# ---- prefill ----------------------------------------------------------------------------


def prefill_variants(ratio: float, local_window: int) -> list[peers.Method]:
    methods = [peers.DENSE]
    for mode in PREFILL_MODES:
        base = zipvl.ZipVLConfig(prefill=mode, local_window=local_window, backend="auto")
        label = f"kv_local{local_window}" if mode == "kv_local" else mode
        methods.append(peers.fixed_ratio_method(f"zipvl {label} r={ratio:g}", base, ratio))
    return methods


def flops_context(shape: Shape, length: int) -> dict[str, float]:
    """Linear vs dense attention FLOPs of a prefill: what free attention could save at most."""
    linear = float(shape.linear_flops_per_token() * length)
    attention = float(dense_pairs(length) * shape.pair_flops() * shape.num_heads
                      * shape.num_layers)
    lm_head = float(shape.lm_head_flops(1))
    total = linear + attention + lm_head
    return {"length": length, "linear": linear, "attention": attention, "lm_head": lm_head,
            "total": total, "attention_share": attention / total,
            "linear_share": linear / total,
            "speedup_ceiling_if_attention_free": total / (total - attention)}


def timed_prefill(model, input_ids: torch.Tensor, device: torch.device) -> dict[str, Any]:
    sync(device)
    reset_peak(device)
    _, seconds, _ = first_token(model, input_ids)  # the argmax's .item() synchronises
    sync(device)
    return {"seconds": seconds, "peak_memory_bytes": peak_bytes(device)}


def run_prefill(model, methods: list[peers.Method], shape: Shape, length: int, repeats: int,
                device: torch.device, seed: int, vocab: int, peak_tflops: float,
                element_size: int) -> list[dict[str, Any]]:
    input_ids = random_ids(length, vocab, seed, device)
    kept_positions: dict[str, dict[int, torch.Tensor]] = {}
    failed: dict[str, str] = {}
    for method in methods:
        # Warm-up, untimed: kernels, allocator blocks at this length, and the kept positions.
        try:
            kept: dict[int, torch.Tensor] = {}
            with peers.applied(model, method, kept=kept):
                first_token(model, input_ids)
            kept_positions[method.name] = kept
        except torch.OutOfMemoryError as error:
            failed[method.name] = f"out of memory: {str(error).splitlines()[0]}"
            log(f"{length:>6} {method.name:<26} {failed[method.name]}")
            release(device)
        release(device, empty_cache=False)
    samples: dict[str, list[dict[str, Any]]] = {m.name: [] for m in methods}
    stats: dict[str, zipvl.ZipVLStats | None] = {}
    for _ in range(repeats):
        for method in methods:
            if method.name in failed:
                continue
            try:
                with peers.applied(model, method):
                    samples[method.name].append(timed_prefill(model, input_ids, device))
                    stats[method.name] = peers.prefill_stats(model)
            except torch.OutOfMemoryError as error:
                failed[method.name] = f"out of memory: {str(error).splitlines()[0]}"
                release(device)
            release(device, empty_cache=False)
    rows = []
    dense_runs = samples[peers.DENSE.name]
    dense_median = statistics.median(r["seconds"] for r in dense_runs) if dense_runs else None
    dense_bytes = dense_cache_bytes(shape, length, element_size)
    dense_flops = flops_of(peers.DENSE, shape, length, {})["total"]
    for method in methods:
        row: dict[str, Any] = {"length": length, "method": method.describe()}
        runs = samples[method.name]
        if method.name in failed or not runs:
            row["skipped"] = failed.get(method.name, "no run")
            rows.append(row)
            continue
        median = statistics.median(r["seconds"] for r in runs)
        method_stats = stats.get(method.name)
        flops = flops_of(method, shape, length, kept_positions.get(method.name, {}))
        row.update({
            "repeats": len(runs), "ttft_seconds": median, "ttft_all": [r["seconds"] for r in runs],
            "speedup_vs_dense": dense_median / median if dense_median else None,
            "peak_memory_bytes": max((r["peak_memory_bytes"] or 0) for r in runs) or None,
            "kept_ratio_mean": (float(method_stats.kept_ratio.mean())
                                if method_stats is not None else 1.0),
            "cache_bytes": method_stats.cache_bytes if method_stats is not None else dense_bytes,
            "dense_cache_bytes": dense_bytes,
            "flops": flops,
            # The speed-up if time followed FLOPs: the ceiling for this variant.
            "flops_speedup_bound": dense_flops / flops["total"],
            "floor_seconds": flops["total"] / (peak_tflops * 1e12),
            "achieved_tflops": flops["total"] / median / 1e12,
        })
        rows.append(row)
        speedup = row["speedup_vs_dense"]
        log(f"{length:>6} {method.name:<26} TTFT {median:8.3f} s  "
            f"x{speedup if speedup else float('nan'):.2f}  kept {row['kept_ratio_mean']:.3f}  "
            f"cache {_size(row['cache_bytes'])}  peak {_size(row['peak_memory_bytes'])}  "
            f"{flops['total'] / 1e12:.3g} TFLOP (FLOPs bound x{row['flops_speedup_bound']:.2f}) "
            f"at {row['achieved_tflops']:.3g} TFLOP/s")
    del input_ids
    release(device)
    return rows


# ---- decoding ---------------------------------------------------------------------------


@torch.inference_mode()
def timed_decode(model, cache, first: torch.Tensor, batch: int, warm_up_steps: int, steps: int,
                 device: torch.device) -> dict[str, Any]:
    """Greedy steps from a copy of ``cache`` repeated to ``batch``; the timed window is
    synchronised at both ends (per-step times would need a sync per step)."""
    reset_peak(device)
    cache = copy.deepcopy(cache)
    if batch > 1:
        cache.batch_repeat_interleave(batch)
    tokens = first.repeat(batch)[:, None]
    for _ in range(warm_up_steps):
        output = model(input_ids=tokens, use_cache=True, **{zipvl.cache_keyword(model): cache})
        tokens = output.logits[:, -1].argmax(-1, keepdim=True)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        output = model(input_ids=tokens, use_cache=True, **{zipvl.cache_keyword(model): cache})
        tokens = output.logits[:, -1].argmax(-1, keepdim=True)
    sync(device)
    seconds = time.perf_counter() - start
    result = {"tokens_per_second": batch * steps / seconds, "seconds_per_step": seconds / steps,
              "timed_seconds": seconds, "peak_memory_bytes": peak_bytes(device)}
    del cache, output, tokens
    return result


def decode_methods(ratio: float, prefill_mode: str, local_window: int) -> list[peers.Method]:
    base = zipvl.ZipVLConfig(prefill=prefill_mode, local_window=local_window, backend="auto")
    return [peers.DENSE,
            peers.fixed_ratio_method(f"zipvl {prefill_mode} r={ratio:g}", base, ratio)]


def run_decode(model, methods: list[peers.Method], shape: Shape, context: int,
               batches: tuple[int, ...], args: argparse.Namespace, device: torch.device,
               element_size: int) -> list[dict[str, Any]]:
    input_ids = random_ids(context, args.vocab_size, args.seed, device)
    margin = int(args.memory_margin_gib * GIB)
    dense_per_sample = dense_cache_bytes(shape, context, element_size)
    rows = []
    for method in methods:
        with peers.applied(model, method):
            try:
                cache, first = decode_prefill(model, input_ids)
            except torch.OutOfMemoryError as error:
                message = f"prefill out of memory: {str(error).splitlines()[0]}"
                rows += [{"context": context, "batch": b, "method": method.describe(),
                          "skipped": message} for b in batches]
                log(f"{context:>6} {method.name:<26} {message}")
                release(device)
                continue
            stats = peers.prefill_stats(model)
            per_sample = stats.cache_bytes if stats is not None else dense_per_sample
            kept_ratio = float(stats.kept_ratio.mean()) if stats is not None else 1.0
            # Decoded tokens add dense-sized K/V per sample and step in both caches.
            per_sample_final = per_sample + dense_cache_bytes(
                shape, args.warm_up_steps + args.steps, element_size)
            for batch in batches:
                row: dict[str, Any] = {"context": context, "batch": batch,
                                       "method": method.describe(), "kept_ratio": kept_ratio,
                                       "cache_bytes_per_sample": per_sample,
                                       "cache_bytes": per_sample * batch}
                need = per_sample_final * batch + margin
                available = available_bytes(device)
                row.update({"estimated_need_bytes": need, "available_bytes": available})
                if need > available:
                    row["skipped"] = (f"cache {per_sample * batch / GIB:.1f} GiB + margin needs "
                                      f"{need / GIB:.1f} GiB, {available / GIB:.1f} GiB free")
                    log(f"{context:>6} {method.name:<26} batch {batch:>3}: skipped, "
                        f"{row['skipped']}")
                    rows.append(row)
                    continue
                try:
                    row.update(timed_decode(model, cache, first, batch, args.warm_up_steps,
                                            args.steps, device))
                except torch.OutOfMemoryError as error:
                    row["skipped"] = f"out of memory: {str(error).splitlines()[0]}"
                release(device)
                rows.append(row)
                if "tokens_per_second" in row:
                    log(f"{context:>6} {method.name:<26} batch {batch:>3}: "
                        f"{row['tokens_per_second']:9.1f} tokens/s "
                        f"({1000 * row['seconds_per_step']:.1f} ms/step)  cache "
                        f"{_size(row['cache_bytes'])}  peak {_size(row['peak_memory_bytes'])}")
                else:
                    log(f"{context:>6} {method.name:<26} batch {batch:>3}: {row['skipped']}")
            del cache, first
            release(device)
    for row in rows:
        dense = next((r for r in rows if r["batch"] == row["batch"]
                      and r["method"]["family"] == "dense" and "tokens_per_second" in r), None)
        if dense is not None and "tokens_per_second" in row:
            row["throughput_vs_dense"] = row["tokens_per_second"] / dense["tokens_per_second"]
    return rows


# ---- main -------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="4K and 8K prefill, one repetition; 4K decoding, 8 steps")
    parser.add_argument("--name", default="gpu",
                        help="result name (benchmarks/results/<name>[-quick]-...json); "
                             "use e.g. gpu-smoke for a CPU smoke run")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke run)")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help="prefill lengths (default 4096 8192 16384 32768)")
    parser.add_argument("--decode-lengths", type=int, nargs="*", default=None,
                        help="decoding contexts (default 4096 8192 16384; none: no decoding)")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repetitions per prefill variant (default 3; quick 1)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed decoding steps (default 32; quick 8)")
    parser.add_argument("--warm-up-steps", type=int, default=None,
                        help="untimed decoding steps first (default 4; quick 2)")
    parser.add_argument("--ratio", type=float, default=RATIO, help="ZipVL fixed kept ratio")
    parser.add_argument("--local-window", type=int, default=LOCAL_WINDOW)
    parser.add_argument("--decode-prefill", default="kv_local",
                        choices=("qkv", "kv", "kv_local", "dense"),
                        help="ZipVL prefill mode before decoding (the cache is the same size)")
    parser.add_argument("--memory-margin-gib", type=float, default=2.0,
                        help="room kept free beyond the cache when deciding a decoding cell fits")
    parser.add_argument("--seed", type=int, default=0)
    add_threads_option(parser)
    shape = parser.add_argument_group("model shape (default: LLaVA-NeXT-7B's language model)")
    shape.add_argument("--layers", type=int, default=None)
    shape.add_argument("--hidden", type=int, default=None)
    shape.add_argument("--heads", type=int, default=None)
    shape.add_argument("--kv-heads", type=int, default=None)
    shape.add_argument("--intermediate", type=int, default=None)
    shape.add_argument("--vocab", type=int, default=None)
    args = parser.parse_args()
    args.lengths = tuple(args.lengths or (QUICK_LENGTHS if args.quick else FULL_LENGTHS))
    if args.decode_lengths is None:
        args.decode_lengths = QUICK_DECODE_LENGTHS if args.quick else FULL_DECODE_LENGTHS
    args.decode_lengths = tuple(args.decode_lengths)
    args.batches = tuple(args.batches)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.steps = args.steps or (8 if args.quick else 32)
    if args.warm_up_steps is None:
        args.warm_up_steps = 2 if args.quick else 4
    return args


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    apply_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device; "
                         "use --device cpu for a smoke run")
    dtype = DTYPES[args.dtype]
    longest = max((*args.lengths, *args.decode_lengths))
    max_positions = max(32768, longest + args.warm_up_steps + args.steps + 1)
    config = model_config(args, max_positions)
    args.vocab_size = config.vocab_size
    facts = device_facts(device)
    log(f"device: {facts.get('gpu', str(device))}  torch {torch.__version__} CUDA "
        f"{torch.version.cuda}  flash-attn importable: {facts['flash_attn_importable']}")
    build_start = time.perf_counter()
    model = build_model(config, device, dtype, args.seed)
    sync(device)
    build_seconds = time.perf_counter() - build_start
    shape = Shape.of(model.config)
    element_size = torch.empty((), dtype=dtype).element_size()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    log(f"model: {shape}  {_size(weight_bytes)} of weights, built in "
        f"{build_seconds:.1f} s")
    peak_tflops = matmul_peak_tflops(device, dtype)
    log(f"matmul peak ({args.dtype}): {peak_tflops:.3g} TFLOP/s")
    settings: dict[str, Any] = {
        "model": "LLaVA-NeXT-7B language model shape (Vicuna-7B / Llama-2-7B), "
                 "LlamaForCausalLM from LlamaConfig, no vision tower",
        "model_config": {"vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
                         "num_hidden_layers": config.num_hidden_layers,
                         "num_attention_heads": config.num_attention_heads,
                         "num_key_value_heads": config.num_key_value_heads,
                         "head_dim": shape.head_dim,
                         "intermediate_size": config.intermediate_size,
                         "rope_theta": LLAVA_NEXT_7B["rope_theta"],
                         "max_position_embeddings": max_positions},
        "shape_overridden": any(v is not None for v in (args.layers, args.hidden, args.heads,
                                                        args.kv_heads, args.intermediate,
                                                        args.vocab)),
        "dtype": args.dtype,
        "weights": RANDOM_WEIGHTS_NOTE,
        "weight_bytes": weight_bytes,
        "model_build_seconds": build_seconds,
        "kept_ratio": {"fixed_ratio": args.ratio, "adaptive": False},
        "device": facts,
        "matmul_peak_tflops": peak_tflops,
        "inputs": f"random token ids, torch.Generator seed {args.seed} + length, batch 1",
        "prefill": {"lengths": list(args.lengths), "repeats": args.repeats,
                    "modes": list(PREFILL_MODES), "local_window": args.local_window,
                    "backend": "auto",
                    "timing": "forward with logits_to_keep=1 and use_cache=True plus argmax, "
                              "CUDA-synchronised; one untimed warm-up per variant and length; "
                              "variants interleaved per repetition; median"},
        "decode": {"contexts": list(args.decode_lengths), "batches": list(args.batches),
                   "steps": args.steps, "warm_up_steps": args.warm_up_steps,
                   "zipvl_prefill": args.decode_prefill,
                   "memory_margin_gib": args.memory_margin_gib,
                   "batch_construction": "one prefill per method and context at batch 1, cache "
                                         "deep-copied and repeated to the batch "
                                         "(Cache.batch_repeat_interleave)",
                   "timing": "greedy steps, synchronised before and after the timed window"},
    }
    figures: dict[str, Any] = {
        "flops_by_length": [
            {**flops_context(shape, n),
             "dense_cache_bytes": dense_cache_bytes(shape, n, element_size)}
            for n in sorted({*args.lengths, *args.decode_lengths})],
        "prefill": [], "decode": []}
    for row in figures["flops_by_length"]:
        log(f"{row['length']:>6} tokens: attention {100 * row['attention_share']:.0f}% of "
            f"dense prefill FLOPs, ceiling if attention were free "
            f"x{row['speedup_ceiling_if_attention_free']:.2f}; dense KV per sample "
            f"{_size(row['dense_cache_bytes'])}")

    methods = prefill_variants(args.ratio, args.local_window)
    for length in args.lengths:
        figures["prefill"] += run_prefill(model, methods, shape, length, args.repeats, device,
                                          args.seed, config.vocab_size, peak_tflops, element_size)
        write_partial(args.name, args.quick, settings, figures, started)
    release(device)

    for context in args.decode_lengths:
        figures["decode"] += run_decode(
            model, decode_methods(args.ratio, args.decode_prefill, args.local_window), shape,
            context, args.batches, args, device, element_size)
        write_partial(args.name, args.quick, settings, figures, started)

    path = write_result(args.name, args.quick, settings, figures, started)
    stem = f"{args.name}-quick" if args.quick else args.name
    (path.parent / f"{stem}-partial.json").unlink(missing_ok=True)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()

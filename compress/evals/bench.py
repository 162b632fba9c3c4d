"""Generation benchmark: TTFT, inter-token latency, end-to-end latency, throughput, memory, cost.

Each model is measured in a fresh worker process, so that peak memory belongs to that model
alone (process RSS on the CPU, the CUDA allocator's peak on a GPU) and nothing measured
before can warm or pollute it.

Method, per batch size: seeded random prompts of exactly ``prompt_tokens`` tokens (special
tokens excluded); greedy generation forced to exactly ``output_tokens`` new tokens
(``min_new_tokens == max_new_tokens``); a streamer timestamps every token after
synchronising the device; ``warmup`` untimed calls, then ``repeats`` timed calls.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from compress.errors import CompressError, UsageError
from compress.evals import cache
from compress.evals.reports import BatchResult, BenchReport, ModelInfo, Request, summarize
from compress.recipe import BenchSpec


class TimingStreamer:
    """A transformers streamer that records when each new token arrives.

    ``generate`` calls ``put`` once with the prompt, then once per generated token.
    """

    def __init__(self, sync) -> None:
        self.sync = sync
        self.start = 0.0
        self.times: list[float] = []
        self._seen_prompt = False

    def begin(self) -> None:
        self.sync()
        self._seen_prompt = False
        self.times = []
        self.start = time.perf_counter()

    def put(self, value) -> None:
        if not self._seen_prompt:
            self._seen_prompt = True
            return
        self.sync()
        self.times.append(time.perf_counter() - self.start)

    def end(self) -> None:
        pass


def make_prompts(tokenizer: Any, vocab_size: int, batch_size: int, length: int, seed: int):
    """``batch_size`` prompts of exactly ``length`` random non-special token ids."""
    import torch

    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    allowed = torch.tensor([i for i in range(vocab_size) if i not in special])
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(allowed), (batch_size, length), generator=gen)
    return allowed[picks]


def measure(model: Any, tokenizer: Any, settings: BenchSpec, device: str) -> tuple[list[BatchResult], list[Request]]:
    """Time generation on an in-memory model. Returns per-batch summaries and raw requests."""
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    vocab = model.get_input_embeddings().weight.shape[0]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    streamer = TimingStreamer(sync)
    batches, requests = [], []
    n_out = settings.output_tokens
    for batch_size in settings.batch_sizes:
        ids = make_prompts(tokenizer, vocab, batch_size, settings.prompt_tokens, settings.seed + batch_size).to(device)
        mask = torch.ones_like(ids)
        kwargs = dict(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n_out,
                      min_new_tokens=n_out, pad_token_id=pad, streamer=streamer, use_cache=True)
        reqs = []
        for i in range(settings.warmup + settings.repeats):
            streamer.begin()
            with torch.inference_mode():
                out = model.generate(**kwargs)
            sync()
            e2e = time.perf_counter() - streamer.start
            if out.shape[1] - ids.shape[1] != n_out or len(streamer.times) != n_out:
                raise CompressError(f"generation produced {out.shape[1] - ids.shape[1]} tokens, not {n_out}",
                                    hint="this model's generate() ignores min_new_tokens; report it as a bug")
            if i >= settings.warmup:
                reqs.append(Request(batch_size=batch_size, repeat=i - settings.warmup, ttft_s=streamer.times[0],
                                    e2e_s=e2e, token_times_s=list(streamer.times)))
        requests.extend(reqs)
        batches.append(summarize_batch(reqs, batch_size, settings))
    return batches, requests


def summarize_batch(reqs: list[Request], batch_size: int, settings: BenchSpec) -> BatchResult:
    ttft = [r.ttft_s for r in reqs]
    e2e = [r.e2e_s for r in reqs]
    itl = [d for r in reqs for d in r.inter_token_s] or [0.0]
    n_out = settings.output_tokens
    prefill_tps = batch_size * settings.prompt_tokens / (sum(ttft) / len(ttft))
    decode_time = sum(r.e2e_s - r.ttft_s for r in reqs) / len(reqs)
    decode_tps = batch_size * (n_out - 1) / decode_time if n_out > 1 and decode_time > 0 else 0.0
    output_tps = batch_size * n_out / (sum(e2e) / len(e2e))
    cost = settings.price_per_hour / 3600.0 / output_tps * 1e6
    return BatchResult(batch_size=batch_size, prompt_tokens=settings.prompt_tokens, output_tokens=n_out,
                       ttft=summarize(ttft), itl=summarize(itl), e2e=summarize(e2e), prefill_tokens_per_s=prefill_tps,
                       decode_tokens_per_s=decode_tps, output_tokens_per_s=output_tps, cost_per_mtok_usd=cost)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """Body of the worker process: load, measure, return the pieces of a report."""
    import torch

    from compress.models import load_model, load_tokenizer, pick_device

    settings = BenchSpec.model_validate(job["settings"])
    device = pick_device(settings.device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    before = _rss_bytes()
    model = load_model(Path(job["path"]), dtype=job["dtype"], device=device,
                       trust_remote_code=job.get("trust_remote_code", False), allow_pickle=job.get("allow_pickle", False))
    tokenizer = load_tokenizer(Path(job["path"]), job.get("trust_remote_code", False))
    model_mem = (torch.cuda.memory_allocated() if device.startswith("cuda") else _rss_bytes() - before)
    oom = CompressError("out of memory while benchmarking",
                        hint="lower bench.batch_sizes, prompt_tokens or output_tokens")
    try:
        batches, requests = measure(model, tokenizer, settings, device)
    except torch.OutOfMemoryError:
        raise oom from None
    except RuntimeError as e:  # the CPU allocator's refusal ("can't allocate memory: you tried to allocate ...")
        if "allocate" in str(e) or "out of memory" in str(e).lower():
            raise oom from None
        raise
    if device.startswith("cuda"):
        peak, kind = torch.cuda.max_memory_allocated(), "cuda_allocator"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "rss"
    from compress.env import environment

    return {"device": device, "batches": [b.model_dump(mode="json") for b in batches],
            "requests": [r.model_dump(mode="json") for r in requests], "peak_memory_bytes": int(peak),
            "memory_kind": kind, "model_memory_bytes": int(model_mem), "environment": environment(torch)}


def bench_settings(spec: BenchSpec, dtype: str) -> dict[str, Any]:
    s = spec.model_dump(mode="json")
    s["dtype"] = dtype
    return s


def run_bench(spec: str, settings: BenchSpec, *, dtype: str = "float32", revision: str | None = None,
              rerun: bool = False, trust_remote_code: bool = False, allow_pickle: bool = False,
              timeout: float | None = None) -> tuple[BenchReport, bool]:
    """Benchmark a model or artifact in a worker process; reuse a cached report when allowed.

    Returns:
        (report, whether it came from the cache)
    """
    from compress.evals.accuracy import model_info
    from compress.models import resolve_model

    ref = resolve_model(spec, revision)
    info: ModelInfo = model_info(ref.path, spec)
    config = bench_settings(settings, dtype)
    key = cache.report_key("bench", info.content_hash, config)
    if not rerun and (hit := cache.load_cached("bench", key, BenchReport)) is not None:
        return hit, True
    job = {"path": str(ref.path), "dtype": dtype, "settings": settings.model_dump(mode="json"),
           "trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
    start = time.time()
    result = _spawn(job, timeout)
    report = BenchReport(model=info, settings=config, size_bytes=info.size_bytes, cache_key=key,
                         created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         duration_s=round(time.time() - start, 3), **result)
    cache.store("bench", key, report)
    return report, False


def _spawn(job: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="compress-bench-") as tmp:
        job_file, out_file = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_file.write_text(json.dumps(job))
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        proc = subprocess.run([sys.executable, "-m", "compress.evals.bench", str(job_file), str(out_file)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
        if proc.returncode != 0 or not out_file.exists():
            tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-1:] or ["(no output)"]
            if proc.returncode == -9 or "out of memory" in proc.stderr.lower():
                raise CompressError("the benchmark ran out of memory",
                                    hint="lower bench.batch_sizes, prompt_tokens or output_tokens")
            raise CompressError(f"the benchmark worker failed: {tail[0]}",
                                hint="rerun with COMPRESS_DEBUG=1 to see the worker's output")
        data = json.loads(out_file.read_text())
        if "error" in data:
            raise CompressError(data["error"], hint=data.get("hint"))
        return data


def _main(argv: list[str]) -> int:
    job_file, out_file = Path(argv[0]), Path(argv[1])
    job = json.loads(job_file.read_text())
    try:
        result = worker(job)
    except CompressError as e:
        result = {"error": e.message, "hint": e.hint}
    except UsageError as e:  # pragma: no cover - UsageError is a CompressError
        result = {"error": e.message, "hint": e.hint}
    if os.environ.get("COMPRESS_DEBUG") == "1" and "error" in result:
        print(result, file=sys.stderr)
    out_file.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

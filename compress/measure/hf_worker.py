"""The transformers side of a benchmark, in its own process: seeded prompts, timed ``generate`` calls and
the worker loop (``python -m compress.measure.hf_worker``: a job on the first line of stdin, then
commands; answers as JSON lines), so that peak memory belongs to the model it holds.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

from compress.core.errors import CompressError, UsageError
from compress.core.recipe import BenchSpec
from compress.core.reports import LevelRun, ServedRequest
from compress.measure.engines.client import make_prompts

# --------------------------------------------------------------------------- prompts


def prompt_seed(settings: BenchSpec, level: int, rnd: int) -> int:
    """The seed of the prompts of one level in one round (the same for both models)."""
    return settings.seed + 1000 * rnd + level


def requests_per_level(settings: BenchSpec, level: int) -> int:
    """How many requests a served level sends per round: every slot busy at least once."""
    return max(settings.repeats, level)


# ----------------------------------------------------------------- hf: generate timing

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


def measure_round(model: Any, tokenizer: Any, settings: BenchSpec, device: str, rnd: int,
                  warmup: bool) -> list[LevelRun]:
    """One round of ``generate`` timing on an in-memory model: every batch size, ``repeats`` calls each."""
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    vocab = model.get_input_embeddings().weight.shape[0]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    streamer = TimingStreamer(sync)
    n_out, runs = settings.output_tokens, []
    for level in settings.batch_sizes:
        ids = torch.tensor(make_prompts(vocab, tokenizer.all_special_ids or [], level, settings.prompt_tokens,
                                        prompt_seed(settings, level, rnd)), device=device)
        kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n_out,
                      min_new_tokens=n_out, pad_token_id=pad, streamer=streamer, use_cache=True)
        reqs = []
        for i in range((settings.warmup if warmup else 0) + settings.repeats):
            timed = i >= (settings.warmup if warmup else 0)
            if timed and not reqs:
                origin = time.perf_counter()
            streamer.begin()
            with torch.inference_mode():
                out = model.generate(**kwargs)
            sync()
            e2e = time.perf_counter() - streamer.start
            if out.shape[1] - ids.shape[1] != n_out or len(streamer.times) != n_out:
                raise CompressError(f"generation produced {out.shape[1] - ids.shape[1]} tokens, not {n_out}",
                                    hint="this model's generate() ignores min_new_tokens; report it as a bug")
            if timed:
                reqs.append(ServedRequest(index=len(reqs), concurrency=level, prompt_tokens=level * ids.shape[1],
                                          output_tokens=level * n_out, started_s=streamer.start - origin,
                                          ttft_s=streamer.times[0], e2e_s=e2e, token_times_s=list(streamer.times),
                                          chunks=n_out))
        runs.append(LevelRun(round=rnd, level=level, wall_s=time.perf_counter() - origin, requests=reqs))
    return runs


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def serve_worker(job: dict[str, Any], commands, answer: Callable[[dict[str, Any]], None]) -> None:
    """Body of the hf worker process: load once, then measure one round per command.

    Commands (JSON lines): ``{"round": r}`` measures every level once; ``{"finish": true}``
    answers with the peak memory and the environment, and ends.
    """
    import torch

    from compress.core.env import environment
    from compress.core.models import load_model, load_tokenizer, pick_device

    settings = BenchSpec.model_validate(job["settings"])
    device = pick_device(settings.device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    before = _rss_bytes()
    model = load_model(Path(job["path"]), dtype=job["dtype"], device=device,
                       trust_remote_code=job.get("trust_remote_code", False), allow_pickle=job.get("allow_pickle", False))
    tokenizer = load_tokenizer(Path(job["path"]), job.get("trust_remote_code", False))
    model_mem = torch.cuda.memory_allocated() if device.startswith("cuda") else _rss_bytes() - before
    answer({"ready": True, "device": device, "model_memory_bytes": int(model_mem)})
    warm = False
    for line in commands:
        command = json.loads(line)
        if command.get("finish"):
            break
        try:
            runs = measure_round(model, tokenizer, settings, device, command["round"], warmup=not warm)
        except torch.OutOfMemoryError:
            raise out_of_memory() from None
        except RuntimeError as e:  # the CPU allocator's refusal ("can't allocate memory: ...")
            if "allocate" in str(e) or "out of memory" in str(e).lower():
                raise out_of_memory() from None
            raise
        warm = True
        answer({"runs": [r.model_dump(mode="json") for r in runs]})
    if device.startswith("cuda"):
        peak, kind = torch.cuda.max_memory_allocated(), "cuda_allocator"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "rss"
    answer({"peak_memory_bytes": int(peak), "memory_kind": kind, "environment": environment(torch)})


def out_of_memory() -> CompressError:
    return CompressError("out of memory while benchmarking", hint="lower bench.batch_sizes, prompt_tokens or output_tokens")


# ----------------------------------------------------------------- the worker process

def _main() -> int:
    """The hf worker: a job on the first line of stdin, then commands; answers as JSON lines.

    stdout carries only the answers: what libraries print goes to stderr.
    """
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def answer(data: dict[str, Any]) -> None:
        answers.write(json.dumps(data) + "\n")
        answers.flush()

    job = json.loads(sys.stdin.readline())
    from compress.core.faults import hang_point

    hang_point("bench-worker")
    try:
        serve_worker(job, sys.stdin, answer)
    except (CompressError, UsageError) as e:
        answer({"error": e.message, "hint": e.hint})
    return 0


if __name__ == "__main__":
    sys.exit(_main())

"""A small async client that drives load through an OpenAI-compatible streaming API.

It sends ``count`` requests to ``/v1/completions`` with ``stream: true``, at most
``concurrency`` in flight, and timestamps every streamed chunk. Prompts are seeded random token
ids of a fixed length (sent as a list of ints, so no server-side tokenization changes their
length); ``max_tokens`` and ``ignore_eos`` fix the output length; temperature 0.

Token counts come from the server's running usage statistics (``stream_options``:
``continuous_usage_stats``), so a chunk that carries several tokens is counted right.

Example:
    prompts = make_prompts(vocab_size=1024, exclude={0, 1, 2}, count=8, length=32, seed=0)
    timings = run_load("http://127.0.0.1:8000", "tiny-llama", prompts, output_tokens=16, concurrency=4)
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any, Iterable, Sequence

from compress.core.errors import EngineError
from compress.core.reports import ServedRequest


def make_prompts(vocab_size: int, exclude: Iterable[int], count: int, length: int,
                 seed: int) -> list[list[int]]:
    """``count`` prompts of exactly ``length`` random token ids below ``vocab_size``, none in
    ``exclude`` (the special tokens)."""
    banned = set(exclude)
    allowed = [i for i in range(vocab_size) if i not in banned]
    rng = random.Random(seed)
    return [[rng.choice(allowed) for _ in range(length)] for _ in range(count)]


async def stream_one(client, url: str, model: str, prompt: Sequence[int] | str, output_tokens: int,
                     index: int = 0, concurrency: int = 1, origin: float | None = None) -> ServedRequest:
    """Send one streamed completion and time it.

    Raises:
        EngineError: the server answered with an error or a stream without tokens.
    """
    body = {"model": model, "prompt": list(prompt) if not isinstance(prompt, str) else prompt,
            "max_tokens": output_tokens, "min_tokens": output_tokens, "ignore_eos": True,
            "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    sent = time.perf_counter()
    origin = sent if origin is None else origin
    times: list[float] = []
    text: list[str] = []
    # a text prompt's token count is the server's to say (in its usage); 0 until it does
    chunks, seen, prompt_tokens, finish = 0, 0, 0 if isinstance(prompt, str) else len(prompt), None
    async with client.stream("POST", url.rstrip("/") + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            detail = (await r.aread()).decode(errors="replace").strip().replace("\n", " ")[:300]
            raise EngineError(f"the server refused a completion request (HTTP {r.status_code}): {detail}")
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            now = time.perf_counter() - sent
            msg = json.loads(data)
            if "error" in msg:
                raise EngineError(f"the server failed while streaming: {msg['error']}")
            usage = msg.get("usage") or {}
            choices = msg.get("choices") or []
            for choice in choices:
                text.append(choice.get("text") or "")
                finish = choice.get("finish_reason") or finish
            if not choices:  # the closing usage-only chunk
                prompt_tokens = usage.get("prompt_tokens", prompt_tokens)
                continue
            if not usage and all(not c.get("text") and c.get("finish_reason") for c in choices):
                continue  # a server without usage counts closes with an empty chunk that carries no token
            chunks += 1
            total = usage.get("completion_tokens", seen + 1)
            times.extend([now] * max(total - seen, 0))
            seen = max(seen, total)
            prompt_tokens = usage.get("prompt_tokens", prompt_tokens)
    e2e = time.perf_counter() - sent
    if not times:
        raise EngineError("the server streamed no tokens", hint="check the server log")
    if len(times) < output_tokens:  # a shorter answer would be timed as if it were a whole one
        raise EngineError(f"the server ended a request after {len(times)} of its {output_tokens} tokens "
                          f"(finish reason: {finish or 'none'})",
                          hint="a server that cuts a stream short (one that interrupts a request when another "
                               "arrives, or stops at end of text) cannot be measured at a fixed length")
    return ServedRequest(index=index, concurrency=concurrency, prompt_tokens=prompt_tokens,
                         output_tokens=len(times), started_s=sent - origin, ttft_s=times[0], e2e_s=e2e,
                         token_times_s=times, chunks=chunks, text="".join(text), finish_reason=finish)


READ_TIMEOUT = 120.0  # the most seconds between two chunks of a streamed answer


def _timeouts(timeout: float):
    """httpx's per-operation bounds under an overall deadline of ``timeout`` s."""
    import httpx

    return httpx.Timeout(min(timeout, READ_TIMEOUT), connect=min(timeout, 30.0))


def _per_prompt(output_tokens: int | Sequence[int], count: int) -> list[int]:
    return [output_tokens] * count if isinstance(output_tokens, int) else list(output_tokens)


async def load(url: str, model: str, prompts: Sequence[Sequence[int] | str], output_tokens: int | Sequence[int],
               concurrency: int, timeout: float = 600.0) -> list[ServedRequest]:
    """Send every prompt, at most ``concurrency`` in flight; results in prompt order. ``output_tokens``: one
    count for all, or one per prompt.

    Every wait ends: a connection or a read that takes longer than :data:`READ_TIMEOUT` s, or a
    request that takes longer than ``timeout`` s in all (a server trickling tokens), is an EngineError.
    """
    import httpx

    outputs = _per_prompt(output_tokens, len(prompts))
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(prompts)):
        queue.put_nowait(i)
    results: list[ServedRequest | None] = [None] * len(prompts)
    origin = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=_timeouts(timeout), limits=limits, trust_env=False) as client:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                results[i] = await _within(url, timeout, stream_one(client, url, model, prompts[i], outputs[i],
                                                                   index=i, concurrency=concurrency, origin=origin))

        await _all_or_first_error(url, [asyncio.ensure_future(worker())
                                        for _ in range(min(concurrency, len(prompts)))])
    return [r for r in results if r is not None]


async def _within(url: str, timeout: float, request: Any) -> ServedRequest:
    """One request's answer, or an EngineError when it takes more than ``timeout`` s in all."""
    try:
        return await asyncio.wait_for(request, timeout)
    except asyncio.TimeoutError:
        raise EngineError(f"a request to {url} took more than {timeout:.0f} s in all "
                          "(the server stopped answering)", hint="check the server log") from None


async def _all_or_first_error(url: str, tasks: list[asyncio.Future]) -> list:
    """The tasks' results in order; on the first failure the others are cancelled and awaited (none is left
    to fail again while the client closes) and that failure is raised, an HTTP error as an EngineError."""
    import httpx

    try:
        return list(await asyncio.gather(*tasks))
    except httpx.HTTPError as e:
        reason = str(e) or "the connection was closed before the answer ended"
        raise EngineError(f"the server at {url} failed to answer: {type(e).__name__}: {reason}",
                          hint="check the server log") from None
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def arrival_times(count: int, rate: float, process: str, seed: int) -> list[float]:
    """When each of ``count`` requests is due, in seconds from the start: ``poisson`` (exponential gaps of mean
    ``1 / rate``, seeded; the first at 0) or ``constant`` (every ``1 / rate`` s)."""
    if process == "constant":
        return [i / rate for i in range(count)]
    if process != "poisson":
        raise ValueError(f"unknown arrival process {process!r}")
    rng = random.Random(seed)
    times, t = [], 0.0
    for _ in range(count):
        times.append(t)
        t += rng.expovariate(rate)
    return times


OPEN_LOOP_CONNECTIONS = 1024  # an open loop must never wait for a free connection: that would close the loop


async def open_load(url: str, model: str, prompts: Sequence[Sequence[int] | str], output_tokens: int | Sequence[int],
                    due: Sequence[float], timeout: float = 600.0) -> list[ServedRequest]:
    """Send prompt ``i`` at ``due[i]`` seconds from now whatever is still in flight (an open loop); results in
    prompt order, each with ``scheduled_s`` (when it was due) and ``started_s`` (when it went). Every wait ends as
    in :func:`load`."""
    import httpx

    outputs = _per_prompt(output_tokens, len(prompts))
    limits = httpx.Limits(max_connections=OPEN_LOOP_CONNECTIONS, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=_timeouts(timeout), limits=limits, trust_env=False) as client:
        origin = time.perf_counter()

        async def one(i: int) -> ServedRequest:
            await asyncio.sleep(max(0.0, origin + due[i] - time.perf_counter()))
            r = await _within(url, timeout, stream_one(client, url, model, prompts[i], outputs[i], index=i,
                                                       concurrency=0, origin=origin))
            r.scheduled_s = due[i]
            return r

        return await _all_or_first_error(url, [asyncio.ensure_future(one(i)) for i in range(len(prompts))])


def run_open_load(url: str, model: str, prompts: Sequence[Sequence[int] | str], output_tokens: int | Sequence[int],
                  due: Sequence[float], timeout: float = 600.0) -> list[ServedRequest]:
    """Synchronous wrapper of :func:`open_load`."""
    return asyncio.run(open_load(url, model, prompts, output_tokens, due, timeout))


def request(method: str, url: str, body: dict | None = None, *, timeout: float = 300.0):
    """One plain (not streamed) HTTP request to a local server, ended after ``timeout`` s in all, however the
    server trickles its answer. Returns the ``httpx.Response`` (any status).

    Raises:
        EngineError: no connection, a broken answer, or no complete answer within ``timeout``.
    """
    import httpx

    async def send():
        async with httpx.AsyncClient(timeout=_timeouts(timeout), trust_env=False) as client:
            return await asyncio.wait_for(client.request(method, url, json=body), timeout)

    try:
        return asyncio.run(send())
    except asyncio.TimeoutError:
        raise EngineError(f"{method} {url} got no complete answer within {timeout:.0f} s",
                          hint="check the server log") from None
    except httpx.HTTPError as e:
        raise EngineError(f"{method} {url} failed: {type(e).__name__}: {e}") from None


def run_load(url: str, model: str, prompts: Sequence[Sequence[int] | str], output_tokens: int | Sequence[int],
             concurrency: int, timeout: float = 600.0) -> list[ServedRequest]:
    """Synchronous wrapper of :func:`load`."""
    return asyncio.run(load(url, model, prompts, output_tokens, concurrency, timeout))

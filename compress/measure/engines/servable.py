"""Can the engine serve an artifact, and does it say what transformers says?

The "servable: vllm" gate check: start vLLM on the artifact (``VllmServer``, from the engine
environment), generate a few tokens greedily for each prompt, and compare them token by token
with the greedy tokens transformers produces in the compression environment
(:func:`hf_reference`, computed by the caller). An engine that refuses the artifact (the CPU
build and bitsandbytes: ``Unknown quantization method: bitsandbytes``) is a result, ``ok``
false with the engine's own error line, not an exception.

Example:
    prompts = make_prompts(vocab_size=1024, exclude={0, 1, 2}, count=4, length=16, seed=0)
    reference = hf_reference(artifact, "bfloat16", prompts, tokens=8)
    result = check_servable(artifact, dtype="bfloat16", prompts=prompts, reference=reference,
                            log_path=run / "servable-vllm.log")
    print(result.ok, result.agreement, result.error)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.core.errors import EngineError
from compress.core.reports import ReportModel
from compress.measure.engines.vllm import VllmServer
from compress.measure.engines.vllm_log import last_meaningful_line


class ServableResult(ReportModel):
    """What the engine did with an artifact.

    ``matching_prefix[i]`` counts the leading tokens of prompt ``i``'s continuation that equal
    the reference; ``agreement`` is the fraction of prompts whose first ``tokens`` tokens all
    match. ``ok``: the engine loaded the artifact, answered every prompt, and ``agreement`` is
    at least ``min_agreement``. ``compared`` says how: ``token_ids`` (the engine returned
    them) or ``text`` (decoded text, when it cannot).
    """

    ok: bool
    engine: str = "vllm"
    engine_version: str | None = None
    dtype: str
    kernels: dict[str, list[str]] = {}
    tokens: int
    served_token_ids: list[list[int]] = []
    matching_prefix: list[int] = []
    agreement: float = 0.0
    min_agreement: float
    compared: str = "token_ids"
    start_s: float | None = None
    error: str | None = None
    log_path: str | None = None


def check_servable(model_dir: Path, *, dtype: str, prompts: list[list[int]], reference: list[list[int]],
                   log_path: Path, tokens: int = 8, min_agreement: float = 1.0,
                   python: Path | None = None, startup_timeout: float | None = None,
                   engine: str = "vllm") -> ServableResult:
    """Serve ``model_dir`` with vLLM (or llama.cpp: ``engine="llamacpp"``, a GGUF artifact), generate ``tokens``
    greedy tokens per prompt, compare. llama.cpp takes text: the prompts go as their decoded text and the
    continuations are compared as text (:func:`_served_ids`); give prompts that decode and encode back to the
    same ids (text the tokenizer made, :func:`text_prompts`).

    Args:
        model_dir: the artifact (or model) directory.
        dtype: vLLM's ``--dtype``; the CPU int4 kernel needs ``bfloat16``.
        prompts: token-id prompts (sent as ids: no server-side tokenization).
        reference: for each prompt, at least its first ``tokens`` greedy token ids from
            transformers (:func:`hf_reference`).
        log_path: where the server's log goes.
        tokens: how many generated tokens are compared.
        min_agreement: the fraction of fully matching prompts ``ok`` requires. On the embedded
            model's int4 artifact in bfloat16 every prompt matched its first 8 tokens.
        python: the engine environment's interpreter (``VllmServer``'s default when None).
        startup_timeout: the ceiling on the server's start while it makes progress (VllmServer's default when None).

    Returns:
        A :class:`ServableResult`; an engine that cannot load or serve the model gives
        ``ok=False`` and ``error`` (the engine's own message, one line).

    Raises:
        EngineError: the engine environment is missing (`make engine`).
        ValueError: prompts and references do not pair, or a reference is too short.
        InputError: ``model_dir`` is not a model directory.
    """
    if len(prompts) != len(reference) or not prompts:
        raise ValueError(f"{len(prompts)} prompts and {len(reference)} references: give one reference per prompt")
    if any(len(r) < tokens for r in reference):
        raise ValueError(f"each reference needs at least {tokens} token ids (tokens={tokens})")
    if engine == "llamacpp":
        from compress.measure.engines.llamacpp import LlamaCppServer

        server = LlamaCppServer(model_dir, log_path=log_path, python=python, startup_timeout=startup_timeout)
    else:
        server = VllmServer(model_dir, dtype=dtype, log_path=log_path, python=python, startup_timeout=startup_timeout)
    result = ServableResult(ok=False, engine=engine, dtype=dtype, tokens=tokens, min_agreement=min_agreement,
                            log_path=str(log_path))
    try:
        with server:
            result.start_s = round(server.start_seconds or 0.0, 3)
            choices = _generate(server, prompts, tokens)
    except _Unanswered as e:  # started, then failed a request: the request's error says why
        result.error = e.message
    except EngineError:
        if server.proc is None:  # no engine environment (`make engine`): not a verdict on the model
            raise
        result.error = last_meaningful_line(server.log_text())  # it did not start: the log's root cause
    else:
        served, compared = _served_ids(choices, model_dir, reference, tokens)
        result.compared = compared
        result.served_token_ids = served
        result.matching_prefix = [_prefix(s, r[:tokens]) for s, r in zip(served, reference)]
        result.agreement = sum(m == tokens for m in result.matching_prefix) / len(prompts)
        result.ok = result.agreement >= min_agreement
        if not result.ok:
            result.error = (f"{result.agreement:.0%} of prompts match the first {tokens} reference tokens "
                            f"(at least {min_agreement:.0%} required)")
    result.engine_version = server.version
    result.kernels = server.kernels
    return result


class _Unanswered(EngineError):
    """The server started but did not answer a request properly."""


def _generate(server: VllmServer, prompts: list[list[int]], tokens: int) -> list[dict[str, Any]]:
    """One greedy completion per prompt, in prompt order. ``ignore_eos``: the comparison runs
    over exactly ``tokens`` tokens, as :func:`hf_reference` does (llama.cpp: ``min_tokens``)."""
    from compress.measure.engines.client import request

    if getattr(server, "TEXT_PROMPTS", False):  # one prompt per request, as text
        from compress.core.models import load_tokenizer

        tok = load_tokenizer(server.model_dir if server.model_dir.is_dir() else server.model_dir.parent)
        bodies = [{"model": server.served_model_name, "prompt": tok.decode(p, skip_special_tokens=True),
                   "max_tokens": tokens,
                   "min_tokens": tokens, "temperature": 0.0} for p in prompts]
    else:
        bodies = [{"model": server.served_model_name, "prompt": [list(map(int, p)) for p in prompts],
                   "max_tokens": tokens, "temperature": 0.0, "ignore_eos": True, "return_token_ids": True}]
    choices = []
    for body in bodies:
        try:
            r = request("POST", server.url + "/v1/completions", body, timeout=300.0)
        except EngineError as e:
            raise _Unanswered(f"{server.NAME} failed to answer: {e}: {server.log_tail()}") from None
        if r.status_code != 200:
            detail = r.text.strip().replace("\n", " ")[:300]
            raise _Unanswered(f"{server.NAME} refused the completion request (HTTP {r.status_code}): {detail}")
        choices += sorted(r.json().get("choices") or [], key=lambda c: c.get("index", 0))
    if len(choices) != len(prompts):
        raise _Unanswered(f"{server.NAME} answered {len(choices)} of {len(prompts)} prompts")
    return choices


def token_prompts(model_dir: Path, tokenizer: Any, count: int, length: int = 16) -> list[list[int]]:
    """The prompts of vLLM's check: ``count`` prompts of ``length`` random token ids (seed 0) from the model's
    vocabulary, none of them a special token. Sent as ids, so no tokenizer on either side moves them."""
    from compress.core.models import vocab_size
    from compress.measure.engines.client import make_prompts

    return make_prompts(vocab_size(model_dir) or len(tokenizer), tokenizer.all_special_ids or [], count, length,
                        seed=0)


def text_prompts(tokenizer: Any, texts: list[str], count: int, length: int) -> list[list[int]]:
    """``count`` prompts of at most ``length`` tokens cut from ``texts``, kept only when their decoded text
    encodes back to the same ids; each as the tokenizer encodes that text, its special tokens (a BOS) included,
    as a server that takes text and tokenizes it with the same tokenizer will see it."""
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for cut in range(min(length, len(ids)), 3, -1):
            head = tokenizer.decode(ids[:cut])
            if tokenizer(head, add_special_tokens=False)["input_ids"] == ids[:cut]:
                out.append(tokenizer(head)["input_ids"])
                break
        if len(out) == count:
            break
    return out


def _served_ids(choices: list[dict[str, Any]], model_dir: Path, reference: list[list[int]],
                tokens: int) -> tuple[list[list[int]], str]:
    """The generated token ids; from the decoded text when the engine does not return ids
    (each reference token counts as matched while the decoded reference prefix is a prefix of
    the served text)."""
    if all(isinstance(c.get("token_ids"), list) for c in choices):
        return [[int(t) for t in c["token_ids"]] for c in choices], "token_ids"
    from compress.core.models import load_tokenizer

    tok = load_tokenizer(model_dir)
    served = []
    for c, ref in zip(choices, reference):
        text, ids = c.get("text") or "", []
        for i in range(tokens):
            if not text.startswith(tok.decode(ref[: i + 1])):
                break
            ids.append(ref[i])
        served.append(ids)
    return served, "text"


def _prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def hf_reference(model_dir: Path, dtype: str, prompts: list[list[int]], tokens: int = 8, *,
                 device: str = "cpu", trust_remote_code: bool = False) -> list[list[int]]:
    """The first ``tokens`` greedy token ids transformers gives for each prompt.

    Plain argmax, step by step, past any end-of-sequence token (the engine is asked for
    ``ignore_eos``): the reference never stops early and suppresses no token.

    Args:
        model_dir: the model or artifact directory (loaded with ``compress.core.models.load_model``).
        dtype: the dtype transformers computes in (match the engine's for a fair comparison).
        prompts: token-id prompts.
        tokens: how many tokens to generate.

    Returns:
        One list of ``tokens`` ids per prompt.
    """
    import torch

    from compress.core.models import load_model

    from compress.build.methods.gguf import GGUF_FILE

    if (Path(model_dir) / GGUF_FILE).is_file():  # transformers dequantizes a GGUF file with the gguf package
        from transformers import AutoModelForCausalLM

        from compress.core.models import torch_dtype

        model = AutoModelForCausalLM.from_pretrained(str(model_dir), gguf_file=GGUF_FILE, dtype=torch_dtype(dtype))
        model.eval()
    else:
        model = load_model(Path(model_dir), dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    out = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([list(prompt)], device=device)
            past, step, generated = None, ids, []
            for _ in range(tokens):
                res = model(input_ids=step, past_key_values=past, use_cache=True)
                past = res.past_key_values
                nxt = int(res.logits[0, -1].argmax())
                generated.append(nxt)
                step = torch.tensor([[nxt]], device=device)
            out.append(generated)
    return out

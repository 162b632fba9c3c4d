"""The recipe's serve and baseline_serve sections: the engine settings a model is served with, as vLLM's flags.

A runtime change is a candidate like a model change: ``serve`` starts the candidate's server with these
settings and ``baseline_serve`` the baseline's, in the same alternating rounds; with ``method: {kind: none}``
the candidate is the base model itself, so that only the settings differ. Each key is one of vLLM's
command-line flags (``SERVE_FLAGS``); a key left out is the engine's default, except prefix caching, which
compress's measurements turn off unless a recipe sets it (a shared prefix must not hide prefill unasked).
"""
from __future__ import annotations

import json
import shlex
from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, field_validator, model_serializer

from compress.core.recipe.base import PositiveInt, Strict

# Each setting and the vLLM flag that carries it, in the order the flags are written (a stable order: the
# flags are part of the speed report's cache key and of an export's serve command). A boolean `x` is
# `--x` when true and `--no-x` when false (vLLM's argparse.BooleanOptionalAction); a mapping is JSON.
SERVE_FLAGS: dict[str, str] = {
    "enable_prefix_caching": "--enable-prefix-caching",
    "enable_chunked_prefill": "--enable-chunked-prefill",
    "max_num_seqs": "--max-num-seqs",
    "max_num_batched_tokens": "--max-num-batched-tokens",
    "kv_cache_dtype": "--kv-cache-dtype",
    "block_size": "--block-size",
    "speculative_config": "--speculative-config",
}
# Speculative methods that read a second model (vLLM's SpeculativeConfig.model): the rest (ngram, suffix, the
# multi-token-prediction heads) find what they need in the served model itself.
NEEDS_MODEL = ("draft_model", "eagle", "eagle3", "medusa", "mlp_speculator")


class ServeSpec(Strict):
    """Engine settings for one side's vLLM server (needs `bench.engine: vllm`), each one of vLLM's flags. A key
    left out is vLLM's default, except prefix caching: compress measures with it off unless it is set here.
    The settings are part of the speed report's cache key, and an export that passed with them carries them
    in its manifest and in its model card's serve command."""

    enable_prefix_caching: bool | None = Field(
        default=None, description="--enable-prefix-caching (true) / --no-enable-prefix-caching (false): reuse the "
        "KV cache of a prompt prefix seen before; unset: off in compress's measurements")
    enable_chunked_prefill: bool | None = Field(
        default=None, description="--enable-chunked-prefill (true) / --no-enable-chunked-prefill (false): split "
        "long prefills into chunks scheduled beside decodes")
    max_num_seqs: PositiveInt | None = Field(
        default=None, description="--max-num-seqs: the most sequences the engine runs in one step")
    max_num_batched_tokens: PositiveInt | None = Field(
        default=None, description="--max-num-batched-tokens: the most tokens the engine processes in one step")
    kv_cache_dtype: Literal["auto", "fp8"] | None = Field(
        default=None, description="--kv-cache-dtype: the KV cache's storage type (fp8 halves it); replaces "
        "bench.kv_cache_dtype for this side")
    block_size: PositiveInt | None = Field(
        default=None, description="--block-size: tokens per KV cache block")
    speculative_config: dict[str, Any] | None = Field(
        default=None, description="--speculative-config (written as JSON): speculative decoding, e.g. {method: "
        "draft_model, model: DIR_OR_HUB_ID, num_speculative_tokens: 4} or {method: ngram, "
        "num_speculative_tokens: 4, prompt_lookup_max: 4}; needs method and num_speculative_tokens, and a model "
        f"for {', '.join(NEEDS_MODEL)}")

    @model_serializer(mode="wrap")
    def _stable_dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Only what is set: a setting added later leaves the dump (the recipe's hash, the cache keys) unchanged.
        return {k: v for k, v in handler(self).items() if v is not None}

    @field_validator("speculative_config")
    @classmethod
    def _speculative(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        method, tokens = value.get("method"), value.get("num_speculative_tokens")
        if not isinstance(method, str) or not method:
            raise ValueError("needs a method (draft_model, ngram, eagle, eagle3, ...)")
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise ValueError("needs num_speculative_tokens, a positive number of tokens proposed per step")
        model = value.get("model")
        if method in NEEDS_MODEL and not (isinstance(model, str) and model):
            raise ValueError(f"method {method} needs a model (the draft: a local directory or a hub id)")
        if isinstance(model, str) and model.startswith(("builtin:", "run:")):
            raise ValueError(f"model {model!r}: vLLM reads a local directory or a hub id (builtin: and run: are "
                             "compress's names; give the folder they name)")
        return value

    def is_empty(self) -> bool:
        """Whether no setting is given (the engine's defaults, and compress's for prefix caching)."""
        return not self.engine_args()

    def engine_args(self) -> list[str]:
        """vLLM's command-line flags for the settings given, in ``SERVE_FLAGS``'s order.

        Example:
            >>> ServeSpec(max_num_seqs=64, enable_prefix_caching=True).engine_args()
            ['--enable-prefix-caching', '--max-num-seqs', '64']
        """
        args: list[str] = []
        for name, flag in SERVE_FLAGS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool):
                args.append(flag if value else "--no-" + flag.removeprefix("--"))
            elif isinstance(value, dict):
                args += [flag, json.dumps(value, sort_keys=True, separators=(", ", ": "))]
            else:
                args += [flag, str(value)]
        return args

    def flags_text(self) -> str:
        """The flags as one shell-quoted string, for a ``vllm serve`` command line ("" when none is set)."""
        return shlex.join(self.engine_args())

"""Start llama.cpp's OpenAI-compatible server (``llama_cpp.server``) with one change: a completion generates at
least one token unless its request asks otherwise (``min_tokens`` 1 by default instead of 0).

lm-eval's ``gguf`` model reads a log-likelihood from the echo of context + continuation and one generated token,
and drops the echo's last token as the generated one. A model that would end right after the continuation
generates none, so the continuation's own last token was dropped instead: every choice of a multiple-choice
question scored 0 and the answers tied. With at least one token generated, lm-eval's reading holds, for compress
and for ``lm_eval --model gguf`` against the same server alike.

Run by the llama.cpp environment's Python (``compress.measure.engines.llamacpp``); it imports nothing of compress.
"""
from llama_cpp.server import types

types.CreateCompletionRequest.model_fields["min_tokens"].default = 1
types.CreateCompletionRequest.model_rebuild(force=True)

from llama_cpp.server.__main__ import main  # noqa: E402  (the request model is changed before the app is built)

if __name__ == "__main__":
    main()

"""GGUF k-quants rounded by AutoRound (``method: {kind: gguf, algorithm: autoround}``), written by auto-round's own
GGUF export.

auto-round (Intel) quantizes the base model in float32 on the CPU with the scheme ``gguf:q4_k_m`` or
``gguf:q5_k_m``: one decoder layer at a time, the rounding and the clipping of every weight group are tuned by
sign-gradient descent for ``iterations`` steps so that the quantized layer's output matches the float layer's on
the calibration activations, in the k-quant's own layout (super-blocks whose scales and minimums are themselves
quantized; the tensors Q4_K_M and Q5_K_M keep at 6 bits as llama.cpp keeps them). Its export then writes the GGUF
with the copy of llama.cpp's conversion code that auto-round bundles.

Like llama.cpp's steps, the run is a process of its own (``python -m compress.build.methods._autoround_gguf``, its
output in the work folder's ``logs/autoround.log``), which is given what it needs and nothing else changes in
compress's process:

- the conversion code is the bundled copy, offline: auto-round can otherwise fetch llama.cpp's newest from GitHub
  (``AUTO_ROUND_GGUF_AUTO_UPDATE``) or read a checkout (``LLAMA_CPP_ROOT``);
- the converter is given compress's GPT-2 pre-tokenizer rule (``_llamacpp.gpt2_fallback``), as llama.cpp's is;
- it runs in the work folder, where auto-round's scratch (``ar_work_space``) lands;
- torch's OpenMP threads sleep while they wait (``OMP_WAIT_POLICY=PASSIVE`` unless set): with the default they
  spin, and the tuning's many small operations slow down manyfold whenever another process holds a core (on the
  embedded model, 8 iterations took 45 s instead of 5 s beside one busy process on 2 cores);
- auto-round's state (module globals, a singleton context, ``exit`` on some errors) ends with the process.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from compress.build.methods import _llamacpp
from compress.build.methods.base import MethodContext, Timer, require
from compress.core.data import load_texts
from compress.core.errors import QuantizationError
from compress.core.procs import OMP_WAIT, omp_wait_policy

MODULE = "compress.build.methods._autoround_gguf"  # this file, as the process that runs AutoRound starts it
TIMEOUT_S = 24 * 3600.0  # tuning a large model on a CPU takes hours; no wait is endless


def build(ctx: MethodContext, out: Path, work: Path, timer: Timer) -> dict[str, Any]:
    """Tune the recipe's k-quant with AutoRound and write it to ``out`` (one GGUF file).

    Returns:
        The details for the manifest: type, algorithm, iterations, auto-round's version, calibration.

    Raises:
        BackendMissingError: auto-round is not installed.
        CompressError: auto-round failed (the last line of its log), or its export did not write one GGUF file.
    """
    require("auto_round", "auto-round", "llmcompressor", "AutoRound's GGUF k-quants")
    from compress.core.env import package_version
    from compress.core.models import load_tokenizer

    method, cal, spec = ctx.recipe.method, ctx.recipe.calibration, ctx.recipe.model
    texts = load_texts(cal.dataset, split=cal.split, config_name=cal.config_name, text_field=cal.text_field,
                       num_samples=cal.num_samples, seed=cal.seed)
    chunks = calibration_chunks(load_tokenizer(ctx.base.path, spec.trust_remote_code), texts, cal.max_seq_length,
                                cal.num_samples)
    (work / "calibration.json").write_text(json.dumps(chunks))
    export = work / "autoround"
    shutil.rmtree(export, ignore_errors=True)  # what an interrupted attempt left is never taken for the result
    command = [sys.executable, "-m", MODULE, str(Path(ctx.base.path).absolute()), "calibration.json",
               export.name, "--scheme", f"gguf:{method.type}", "--iterations", str(method.iterations),
               "--seed", str(cal.seed), *(["--trust-remote-code"] if spec.trust_remote_code else []),
               *(["--allow-pickle"] if spec.allow_pickle else [])]
    env = {"AUTO_ROUND_GGUF_AUTO_UPDATE": "0", "LLAMA_CPP_ROOT": "",
           OMP_WAIT: omp_wait_policy()}
    with timer("autoround"):
        _llamacpp.run(command, what="auto-round", log_path=work / "logs" / "autoround.log", env=env, cwd=work,
                      timeout=TIMEOUT_S)
    files = sorted(export.rglob("*.gguf"))
    if len(files) != 1:
        raise QuantizationError(f"auto-round's GGUF export wrote {len(files)} .gguf files, not 1",
                                hint=f"see {export} and {work / 'logs' / 'autoround.log'}")
    shutil.move(str(files[0]), str(out))
    shutil.rmtree(export, ignore_errors=True)
    return {"type": method.type.upper(), "algorithm": "autoround", "iterations": method.iterations,
            "auto_round": package_version("auto-round"), "gguf": package_version("gguf"),
            "calibration": {"dataset": cal.dataset, "texts": len(texts), "chunks": len(chunks),
                            "context": len(chunks[0])}}


def calibration_chunks(tokenizer: Any, texts: list[str], length: int, limit: int) -> list[list[int]]:
    """The calibration texts as AutoRound's samples: joined as ``llama-imatrix`` reads them on the llama.cpp path
    and cut into chunks of ``length`` tokens (at most ``limit``), each opened by BOS where the tokenizer opens a
    text with it. AutoRound drops every sample shorter than its sequence length, which one text often is.

    Returns:
        Token ids, every chunk of the same length (``length``, or all the tokens when there are fewer).
    """
    # verbose=False: the joined text is longer than the model's context by design (it is cut below)
    stream = tokenizer("\n\n".join(texts), add_special_tokens=False, verbose=False)["input_ids"]
    bos = tokenizer.bos_token_id
    head = [bos] if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else []
    step = max(1, min(length - len(head), len(stream)))
    return [head + stream[i:i + step] for i in range(0, len(stream) - step + 1, step)][:limit]


def _main(argv: list[str]) -> None:
    """The AutoRound run itself, in a process of its own (``build`` starts it in the work folder)."""
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("calibration", type=Path, help="token-id chunks, a JSON list of lists of equal length")
    parser.add_argument("output_dir")
    parser.add_argument("--scheme", required=True, help="gguf:q4_k_m or gguf:q5_k_m")
    parser.add_argument("--iterations", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--allow-pickle", action="store_true")
    args = parser.parse_args(argv)

    import torch
    from auto_round import AutoRound
    from auto_round.export.export_to_gguf import llama_cpp_conversion

    from compress.core.models import load_model, load_tokenizer

    try:
        conversion = llama_cpp_conversion.get_conversion(args.model_dir, auto_update=False)
    except (NotImplementedError, ImportError) as e:  # an architecture newer than the bundled converter
        first = str(e).split(". ")[0]  # the rest of auto-round's message points at the network or a checkout
        sys.exit(f"auto-round's bundled GGUF converter cannot write this model ({first}): use algorithm: llamacpp")
    chunks = [torch.tensor([ids]) for ids in json.loads(args.calibration.read_text())]
    model = load_model(args.model_dir, "float32", "cpu", args.trust_remote_code, args.allow_pickle)
    tokenizer = load_tokenizer(args.model_dir, args.trust_remote_code)
    with _llamacpp.gpt2_fallback(conversion.module.TextModel, args.model_dir):
        compressor = AutoRound(model, tokenizer=tokenizer, scheme=args.scheme, dataset=chunks, iters=args.iterations,
                               nsamples=len(chunks), seqlen=chunks[0].shape[-1], batch_size=min(8, len(chunks)),
                               seed=args.seed, device_map="cpu", amp=False, enable_torch_compile=False,
                               low_cpu_mem_usage=False)
        compressor.quantize_and_save(args.output_dir, format=args.scheme)


if __name__ == "__main__":
    _main(sys.argv[1:])

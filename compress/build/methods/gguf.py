"""GGUF for llama.cpp (and Ollama, LM Studio on top of it): k-quants quantized by llama.cpp itself.

The checkpoint is converted to a float32 GGUF by llama.cpp's converter; for a k-quant, ``llama-imatrix`` computes
an importance matrix over the recipe's calibration texts (each token's activations, per input column of every
matrix: which weights the rounding must keep closest); ``llama-quantize`` then writes the type asked with that
matrix. ``q8_0`` takes no matrix, and ``f16`` is the conversion alone. These are llama.cpp's own tools, so the
artifact is exactly what a llama.cpp user would make, and what the gate measures is what llama.cpp serves.
With ``algorithm: autoround`` (q4_k_m, q5_k_m), AutoRound tunes the k-quant's rounding on the calibration text and
auto-round's own GGUF export writes the file instead (``_autoround_gguf``).

The artifact is one ``model.gguf`` (weights, tokenizer, chat template), beside the base's ``config.json`` and
tokenizer files (what the model is and how it tokenizes, for tools that read them; nothing loads weights from
them), the recipe and the manifest. It is served
and evaluated by llama.cpp's server (``bench.engine: llamacpp``, ``evals.engine: llamacpp``), not by transformers
or vLLM.
"""
from __future__ import annotations

import os
import shutil

from compress.build.methods import _autoround_gguf, _llamacpp
from compress.build.methods.base import MethodContext, MethodResult, Timer, claim_work_dir, save_tokenizer
from compress.core.data import load_texts

GGUF_FILE = "model.gguf"
# compress's type name -> (llama-quantize's type, the scheme's description)
TYPES = {
    "q4_k_m": ("Q4_K_M", "GGUF Q4_K_M (4-bit k-quant, some tensors at 6 bits)"),
    "q5_k_m": ("Q5_K_M", "GGUF Q5_K_M (5-bit k-quant, some tensors at 6 bits)"),
    "q8_0": ("Q8_0", "GGUF Q8_0 (8-bit, blocks of 32)"),
    "f16": ("F16", "GGUF F16 (no quantization)"),
}
K_QUANTS = {"q4_k_m", "q5_k_m"}


def threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def apply(ctx: MethodContext) -> MethodResult:
    method = ctx.recipe.method
    qtype, name = TYPES[method.type]
    work = claim_work_dir(ctx).absolute()
    logs = work / "logs"
    out = (ctx.out_dir / GGUF_FILE).absolute()  # the llama.cpp steps run in the work folder
    timer = Timer()
    details: dict = {"type": qtype, "llama_cpp_python": _llamacpp.package_version()}
    source = ctx.base.path
    shutil.copyfile(source / "config.json", ctx.out_dir / "config.json")
    save_tokenizer(ctx)
    if method.algorithm == "autoround":
        details = _autoround_gguf.build(ctx, out, work, timer)
        return MethodResult(format="gguf", scheme=f"{name}, rounding tuned by AutoRound ({method.iterations} "
                                                  f"iterations)", details=details, timings=timer.timings)
    if method.type == "f16":
        with timer("convert"):
            _llamacpp.convert(source, out, outtype="f16", log_path=logs / "convert.log")
        return MethodResult(format="gguf", scheme=name, details=details, timings=timer.timings)
    quantize, full = _llamacpp.tool("llama-quantize"), work / "model-f32.gguf"
    with timer("convert"):
        _llamacpp.convert(source, full, outtype="f32", log_path=logs / "convert.log")
    command = [str(quantize)]
    if method.imatrix and method.type in K_QUANTS:
        cal = ctx.recipe.calibration
        texts = load_texts(cal.dataset, split=cal.split, config_name=cal.config_name, text_field=cal.text_field,
                           num_samples=cal.num_samples, seed=cal.seed)
        (work / "calibration.txt").write_text("\n\n".join(texts) + "\n")
        # Run in the work folder with relative names: llama.cpp records the matrix's and the text's paths in
        # the GGUF's metadata, which must not carry the building machine's folders (nor change the bytes).
        with timer("imatrix"):
            _llamacpp.run([str(_llamacpp.tool("llama-imatrix")), "-m", full.name, "-f", "calibration.txt",
                           "-o", "imatrix.gguf", "-c", str(cal.max_seq_length), "-t", str(threads()),
                           "--no-ppl"], what="llama-imatrix", log_path=logs / "imatrix.log", cwd=work)
        command += ["--imatrix", "imatrix.gguf"]
        details["imatrix"] = {"dataset": cal.dataset, "texts": len(texts), "context": cal.max_seq_length}
    elif method.imatrix and method.type not in K_QUANTS:
        details["imatrix"] = None  # llama.cpp's Q8_0 takes none
    with timer("quantize"):
        _llamacpp.run([*command, full.name, str(out), qtype, str(threads())], what="llama-quantize",
                      log_path=logs / "quantize.log", cwd=work)
    return MethodResult(format="gguf", scheme=name + (" with an importance matrix" if "--imatrix" in command
                                                      else ""), details=details, timings=timer.timings)

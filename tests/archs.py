"""Tiny randomly initialised decoder-only models of several architectures, for tests.

Widths are multiples of 128 so group-128 quantization applies; each model reuses the embedded
model's tokenizer (vocabulary 1,024) so that it can be calibrated and evaluated like any other.
"""
from pathlib import Path

ARCHS = {
    "qwen2": ("Qwen2Config", dict(hidden_size=128, intermediate_size=256, num_attention_heads=4,
                                   num_key_value_heads=2)),
    "mistral": ("MistralConfig", dict(hidden_size=128, intermediate_size=256, num_attention_heads=4,
                                       num_key_value_heads=2)),
    "gpt_neox": ("GPTNeoXConfig", dict(hidden_size=128, intermediate_size=512, num_attention_heads=4)),
    "opt": ("OPTConfig", dict(hidden_size=128, ffn_dim=512, num_attention_heads=4, word_embed_proj_dim=128)),
    "phi": ("PhiConfig", dict(hidden_size=128, intermediate_size=512, num_attention_heads=4)),
}


def build(arch: str, out: Path, tokenizer_dir: Path, layers: int = 2, seed: int = 0) -> Path:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cls_name, kwargs = ARCHS[arch]
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = getattr(transformers, cls_name)(vocab_size=len(tok), num_hidden_layers=layers,
                                             max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return out

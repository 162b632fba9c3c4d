"""Serving engines the artifacts are measured on (see docs, "Engines").

Each engine is one module; ``vllm`` runs as a managed server from its own environment
(``make engine``) and is driven over HTTP by ``client``. Nothing here imports vLLM.
"""

"""Measure: what a model does (accuracy through lm-evaluation-harness, paired per document) and
what it costs (throughput, latency, memory, cost per million tokens), in transformers or served
by an engine. Imports only the core and build.
"""

"""Ship: export an artifact that passed its gate with its evidence, sign and verify it, and
report it (tables, model card, JUnit, summaries). Imports only the core and the stages before it.
"""

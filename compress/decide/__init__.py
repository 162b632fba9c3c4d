"""Decide: hold a candidate to its recipe's gate (paired statistics, sequential tests, evidence)
and choose among candidates (cascades). Imports only the core and the stages before it.
"""

"""The shared ground every stage stands on: errors and exit codes, the environment, processes and
the console, locks and atomic writes, the content-addressed cache, models and their data, the
recipe schema, the scheme table, typed reports and the statistics.

The core imports nothing from the stages (build, measure, decide, ship) above it.
"""

"""The offline lab: synthetic scene generator, datasets, training, detector and tracking evaluation.

Used by the CLI's model commands and the benchmarks; the runtime (`pipeline`, `engines`) never imports it
(checked by the import contracts in .importlinter).
"""

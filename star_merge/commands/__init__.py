"""The ``star-merge`` subcommands: one module each, with its arguments dataclass, ``make_parser`` and ``run``.

Thin on purpose: a handler parses, calls the library (align, barrier, evaluate, export-bma, push) and prints.
"""

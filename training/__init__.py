"""Training's machinery around train.py's loop: per-epoch backups, safe stops, TensorBoard logs, synthetic
training heads and the tests' tiny runs.

May import: constants, common/ and the seed's library at the root (dataset, modules).
"""

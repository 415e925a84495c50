"""Through-plane super-resolution: thick clinical slices refined into fine ones by a 1-D network
(slice geometry and working grid, per-volume adaptation, refinement with data consistency).

May import: constants, common/, the seed's library at the root (modules, inference) and scans/.
"""

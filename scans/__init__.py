"""The user's file formats: 2D images, NIfTI/MGH volumes, DICOM series, BIDS datasets, the provenance
sidecar of every output and the figure beside every volume output.

May import: constants, common/, and the seed's library at the root (dataset, modules, inference).
"""

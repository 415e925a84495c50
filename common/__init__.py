"""What every part shares: atomic files, the command line's pieces, TensorFlow's one door, the one PSNR,
the one thick-slice operator and which model file a run uses.

May import: constants only (and each other).  Imported by everything else.
"""

"""Every setting a user edits, in one place.

The settings a run needs to change are defaults of command-line flags of
train.py / predict.py (run either with --help to see them), so editing this
file and passing a flag are two ways of doing the same thing.  The rest (how
the embedded sample is cut, the filter counts, the augmentation ranges) are
edited here: they change what a trained model is, not how one run goes.
"""

# --- Data -------------------------------------------------------------------
# ADNI-style tree: <DATA_DIR>/{train,test}/<class>/*.jpeg|jpg|png.  When this
# default folder does not exist, dataset.py builds a sample in the same layout
# from the MNI152 T1 template that ships inside the nilearn wheel (offline).
DATA_DIR = "data/AD_NC"
# Image files the data reader accepts (lower-case suffixes).
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff")
# Slices are padded with black (or centre-cropped) to TARGET_SIZE x TARGET_SIZE;
# ADNI slices are 256 wide x 240 tall, so they get 16 black rows at the bottom.
TARGET_SIZE = 256
# Share of the groups of train/ held out for validation (a group is one file
# name up to its last '_': one subject's volume in ADNI's <subject>_<slice>
# naming), and the seed that picks them.  A tree with a validation/ folder
# (the embedded sample has one) uses that folder instead.
VALIDATION_SPLIT = 0.2
SEED = 1337
# The project's name and version, written into what it derives (DICOM
# SoftwareVersions and Manufacturer, the provenance of outputs).
PROJECT_NAME = "brain-mri-espcn"
VERSION = "0.32.0"
# Embedded sample: slices are written as 256 wide x 240 tall 8-bit images, like
# ADNI.  Test slices are one contiguous central axial slab; validation slices
# are two axial slabs, one on either side of it; a gap of SAMPLE_GAP_SLICES
# slices between every two splits keeps each slice away from the others'.
SAMPLE_SIZE = (256, 240)
SAMPLE_TEST_FRACTION = 0.2
SAMPLE_VALIDATION_FRACTION = 0.1   # each of the two validation slabs: 19 of the template's 189 slices
SAMPLE_GAP_SLICES = 6

# --- Model ------------------------------------------------------------------
# x4 in each direction (64x64 -> 256x256).  The model can be built for 2-8,
# but the pretrained model and all reported figures are x4.
UPSCALE_FACTOR = 4
# Filters of the seed's three feature convolutions (ESPCN, Shi et al. 2016);
# the pretrained model has these.  --filters trains a wider (slower) variant.
FILTERS = (64, 64, 32)
# The quality network (modules.get_quality_model, predict.py --model quality,
# train.py --network quality): the width of its body and its residual blocks.
# 64 and 4 are the size calibrated outside the project for issue 30 (320k
# parameters x4, +0.2 dB over the ESPCN on real slices with the ESPCN's short
# schedule, about 2.2x its time a training step); train.py --quality-filters
# and --blocks override them.  The shipped through-plane files have 4 blocks
# (6 would take a head's two volumes past the 180 s budget); the shipped
# in-plane x4 file has 6, grown on a GPU (+0.15 dB on real slices, 85 s
# against 59 s for a 256x256x180 volume on a 2-core CPU, under the 120 s
# budget; docs/training-recipe.md, *Stage 4*): train it with --blocks 6.
QUALITY_FILTERS = 64
QUALITY_BLOCKS = 4

# --- Training ---------------------------------------------------------------
BATCH_SIZE = 16          # per replica; the global batch is this x replicas
EPOCHS = 50
LEARNING_RATE = 1e-3     # Adam; scaled linearly with the number of replicas
# Training loss: "mse" optimises PSNR directly; "l1" (mean absolute error) often
# trains super-resolution nets to a higher PSNR (EDSR, Lim et al. 2017).
LOSS = "mse"
PATIENCE = 8             # early stopping on validation loss, best weights kept
# "cosine" decays the rate to LR_FLOOR (2%) of itself over the run: a few
# tenths of a dB better than a constant rate for the same epochs; "constant"
# is the seed's.  The same floor ends per-volume adaptation's cosine and
# tools/accelerator_stage.py's.
LR_SCHEDULE = "cosine"
LR_FLOOR = 0.02
# Training crops: PATCH_SIZE x PATCH_SIZE high-resolution crops centred where
# the tissue is, instead of whole mostly-black slices: 4x fewer FLOPs a sample
# and far more variety per second of CPU.  0 trains on whole slices (the seed).
PATCH_SIZE = 96
# Random crops drawn from each training slice per epoch.
PATCHES_PER_IMAGE = 2
# Batches the input pipeline prepares in parallel and keeps ready: each is a
# whole batch of crops, so 2 keep a 2-core CPU's model fed; tf.data's own
# autotuner is turned off (it stalled passes over the data by ~1 s here).
PIPELINE_PARALLEL_BATCHES = 2
# Augmentation (flips, 90-degree turns, intensity scale and gamma, noise):
# it is what makes a model trained on one smooth template work on real scans.
AUGMENT = True
# Its ranges: intensity peak and gamma cover scans darker/brighter and of other
# contrast curves than the template; inversion makes T2/PD-like contrast; the
# Gaussian noise (std up to NOISE_MAX, on tissue only) mimics real scanner noise.
INTENSITY_SCALE_RANGE = (0.35, 1.0)
GAMMA_RANGE = (0.55, 1.8)
INVERT_PROBABILITY = 0.2
NOISE_MAX = 0.03
# Numerical precision: "auto" picks mixed_bfloat16 on CPUs with AVX-512 BF16 /
# AMX, mixed_float16 on GPUs, float32 otherwise.  PRECISIONS: what --precision takes.
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
PRECISION = "auto"
# Precision of predictions (predict.py, benchmark.py), chosen as PRECISION is:
# bfloat16 on a BF16 CPU for -0.010 dB held-out PSNR (modules.inference_model).
PREDICT_PRECISION = "auto"
# XLA compilation of the training step: "auto" uses it for float32 (measured
# +15-20% training throughput on a 2-core CPU), not for mixed precision, whose
# speed comes from oneDNN's bfloat16 kernels that XLA:CPU does not use.
JIT = "auto"
# Training strategy: "auto" = MirroredStrategy with >1 GPU, else one device.
STRATEGY = "auto"

# Per-image PSNR is capped here: an exact reconstruction (e.g. an all-black
# slice) has infinite PSNR, which would make every mean infinite.
PSNR_CAP_DB = 100.0

# --- Output -----------------------------------------------------------------
OUTPUT_DIR = "output"
# The two networks (predict.py --model espcn|quality, train.py --network), their names in what a run
# writes (console, JSON sidecar, DICOM SeriesDescription and DerivationDescription, BIDS desc-, file
# names: <stem>_<network>_x4), and which one runs without --model.  DEFAULT_NETWORK is the one for the
# user's own scans (--input, --bids; in-plane and --through-plane): the quality network, sharper than
# the ESPCN on average on every set of real scans measured (README, Results; on a very noisy
# diffusion slice the ESPCN gained a little more) at several times its work a pixel.  The
# seed's job keeps the seed's network: train.py trains the ESPCN and predict.py without --input
# evaluates it (SEED_NETWORK).  A model train.py wrote into --output-dir is preferred to either.
NETWORKS = ("espcn", "quality")
DEFAULT_NETWORK = "quality"
SEED_NETWORK = "espcn"
NETWORK_LABELS = {"espcn": "ESPCN", "quality": "Quality network"}
# Committed models, trained with the commands in docs/training-recipe.md and docs/through-plane.md:
# in-plane x4 of each network, and through-plane one per factor ({factor} is filled in; the quality
# network ships QUALITY_THROUGH_PLANE_FACTORS only, the ESPCN THROUGH_PLANE_FACTORS' whole range).
PRETRAINED_IN_PLANE = {"espcn": "pretrained/espcn_x4.keras", "quality": "pretrained/quality_x4.keras"}
PRETRAINED_THROUGH_PLANE = {"espcn": "pretrained/espcn_through_x{factor}.keras",
                            "quality": "pretrained/quality_through_x{factor}.keras"}
# What train.py writes into --output-dir (and predict.py looks for there): named for the network,
# and for through-plane models their factor, so that no run's model replaces another kind's.
TRAINED_IN_PLANE = "{network}.keras"
TRAINED_THROUGH_PLANE = "{network}_through_x{factor}.keras"
# A DICOM series is written back as NIfTI ("nifti"), as a new DICOM series
# beside the original ("dicom", for PACS and viewers), or "both"; other inputs
# are written in their own format.  predict.py --output-format.
OUTPUT_FORMAT = "nifti"
# Number of test images in the comparison figure (the seed's multi_comp_5.png).
FIGURE_IMAGES = 5
# Side of the zoomed inset's region in the comparison figures, as a share of the
# slice's shorter side (a quarter of a 256 slice: 64 pixels, shown 2.7x larger).
INSET_FRACTION = 0.25
# Input pixels (margins included) per inference batch: as many planes or tiles
# as hold this many go through the model at once (128 planes of 64x64 fed as
# trained, 95 with the mirror margin, 7 tiles of 256x256 with their margins;
# predict.py's --batch-size sets a count instead).  It bounds the memory of one
# model call (about 130 MB of activations per layer in float32); on the earlier
# valid-padding path, on a 2-core EPYC with AVX-512 BF16, 64x64 planes ran 1186
# img/s at 16 planes a batch, 1283 at 32, 1340 at 64 and 1403 at 96, and
# 128x128 tiles peaked at 8-16 a batch; on an AMX Xeon batch size did not
# matter (460-670 img/s from 4 to 95 planes, shared/bench/amx-findings.md).
PREDICT_BATCH_PIXELS = 2 ** 19
# Self-ensemble: the model's output averaged over this many flips / quarter turns
# of its input (1, 2, 4 or 8; EDSR's "+"), at as many times the work.  Measured
# on six real slices of scans (tools/proxy_check.py's three and three from
# dipy's wheel), 8 over 1: the shipped model +0.12 dB mean, +0.08 dB on its
# weakest slice; the model it replaced +0.13 and +0.26 dB.  Images are
# milliseconds either way, so they get 8;
# a NIfTI volume of hundreds of slices would take 8x the minutes, so it gets 1.
# predict.py --ensemble N sets both.
ENSEMBLE_IMAGES = 8
ENSEMBLE_VOLUMES = 1
# Compression level of .nii.gz and .mgz outputs, written with ISA-L's deflate
# (python-isal, levels 0-3).  A 256x256x64 int16 volume's x4 output (128 MB
# raw), 2-core AVX2 EPYC: level 1 0.27 s / 34.4 MB, 2 0.28 s / 33.4 MB, 3 0.61
# s / 33.3 MB; zlib's level 1 (nibabel's default) 1.09 s / 34.2 MB, zlib-ng's 1
# 0.49 s / 43.6 MB.  predict.py --gzip-level sets it.
GZIP_LEVEL = 2
# Planes of more than TILE_SIZE x TILE_SIZE input pixels are super-resolved in
# overlapping tiles of at most TILE_SIZE a side, each with a margin of the network's receptive radius, so the result is
# the same as whole-plane inference and memory stays bounded for any image size
# (with PREDICT_BATCH_PIXELS).  Larger tiles carry less margin: 256x256 and
# 512x512 planes ran 3-4% faster in tiles of 256 than of 128 (2-core EPYC, BF16).
TILE_SIZE = 256
# Edges (inference.py's docstring has the measurements): a plane is fed to the
# network as it was trained (its convolutions zero-pad), except planes smaller
# than MIRROR_BELOW input pixels a side (on tissue crops the mirror margin won
# below about 24, as trained won from 28 up) and planes whose border ring is
# flat (its values span at most FLAT_BORDER_SPAN on [0, 1]) above the background
# (BACKGROUND_LEVEL): zero padding darkens a flat border by up to 7/255, and
# under 0.5/255 at or below 0.02.  predict.py --edges trained|mirror overrides.
EDGES = "auto"
MIRROR_BELOW = 24
FLAT_BORDER_SPAN = 2 / 255
BACKGROUND_LEVEL = 0.02
# An output is refused up front when this many times its size exceeds the free
# memory: room for the output array plus what the image/NIfTI writers copy.
OUTPUT_MEMORY_FACTOR = 2.0

# TensorBoard (train.py writes <output-dir>/logs): a comparison image of
# TENSORBOARD_IMAGES validation slices every TENSORBOARD_IMAGE_EVERY epochs.
TENSORBOARD_IMAGE_EVERY = 5
TENSORBOARD_IMAGES = 3

# --- Through-plane super-resolution (predict.py --through-plane) ------------
# The factor a --compare --through-plane run makes thick slices with, when
# --through-plane-factor is not given (4 mm slices from a 1 mm volume); with a
# --model file or network of other factors, the nearest of them.
THROUGH_PLANE_COMPARE_FACTOR = 4
# The factors of the shipped through-plane ESPCNs (pretrained/): with --model espcn a volume's
# slice spacing / in-plane voxel, rounded into this range, is the factor the
# network works at (slice_geometry.py); below THROUGH_PLANE_MIN_RATIO a volume
# is nearly isotropic and refused unless --through-plane-factor is given.
THROUGH_PLANE_FACTORS = (2, 6)
# The factors the quality network ships through-plane (pretrained/quality_through_x<F>.keras).
# With the quality network (the default) and no --through-plane-factor, a volume whose ratio has no quality file
# is refined at the nearest of these (ties: the smaller, whose working grid has fewer voxels), on a working grid
# of spacing / F.  x6 serves clinical 5-6 mm slices on zero-filled 0.43 mm pixels (ratio 14): on
# ../shared/bench/clinical_geometry.py's such case +1.82 dB over cubic B-spline at x6 on a 1 mm grid against
# +1.71 at x4 on 1.5 mm; on its 4 mm slices 5 mm apart on 1 mm pixels (ratio 5, the tie) x4 +2.28 against
# x6 +2.23 (docs/through-plane.md, *A quality network for x6*).  x5 and x2 have no quality file.
QUALITY_THROUGH_PLANE_FACTORS = (3, 4, 6)
THROUGH_PLANE_MIN_RATIO = 1.4
# An in-plane axis whose voxel is within this ratio of the working voxel (spacing / F) stays as
# acquired instead of being resampled onto the working grid: B-spline resampling a 1 mm axis to
# 0.87 mm, or 0.87 mm to 1 mm, only blurs it, and the network refines a plane of either as well.
WORKING_GRID_TOLERANCE = 1.2
# How many times a model's factor may exceed a volume's spacing / pixel ratio when the factor
# is the model's rather than --through-plane-factor's (a --model file of one factor, or the
# quality network's nearest): the working grid is then that much finer than the volume's own
# pixels in-plane, and its voxels grow with the square (a x8 file on 1.4 mm slices of 1 mm
# pixels: 33x the voxels, gigabytes for a head).  2.5 lets the quality network take every
# ratio the ESPCN does (x3 at 1.4: 2.1) and refuses a x6 file on 2 mm slices.
THROUGH_PLANE_MAX_OVERSAMPLING = 2.5
# Seconds one volume may take (adaptation and inference): a cap, not a
# target.  Adaptation runs its steps (NETWORK_PRESETS, below), so its result does not
# depend on the machine; only when the cap would be passed (a loaded or slow
# machine) is it cut short, with a warning.  TensorFlow's start-up (about 10 s
# a run), reading and writing (a few seconds a volume) come on top.  On the
# 2-core AVX2 EPYC a clinical volume took 55-85 s in all (docs/through-plane.md),
# inside issue 28's 120 s a volume; at 90 s the cap
# came within seconds of cutting the slowest of them on a quiet machine,
# which would have made its output depend on the moment.
THROUGH_PLANE_SECONDS = 105.0
# Per-volume adaptation (SMORE's idea): fine-tune the pretrained model on the
# volume's own fine in-plane planes, made thick along one in-plane direction.
# Crops are about ADAPT_PATCH fine pixels a side (cut to a multiple of the
# factor), centred on tissue; a fine-tuning rate below training's 1e-3
# keeps what the pretrained start knows, decayed by a cosine over the budget.
# Measured on held-out real heads, 2000 steps (docs/through-plane.md): 1e-3
# gained +0.08 / +0.03 dB on the head with skull but lost 0.03 / 0.11 dB on a
# skull-stripped one; 2e-4 lost 0.06 dB on the head with skull.
ADAPT_PATCH = 64
ADAPT_BATCH_SIZE = 16
ADAPT_LEARNING_RATE = 5e-4
ADAPT_SCRATCH_LEARNING_RATE = 1e-3  # factors without a pretrained model train from scratch
# Adaptation stops early when the model's loss on ADAPT_VALIDATION_CROPS fixed
# crops of the volume itself has not improved by ADAPT_MIN_GAIN (relative) for
# ADAPT_PATIENCE checks, one every ADAPT_CHECK_STEPS steps; the best check's
# weights are kept.  Most of adaptation's gain comes early (docs/through-plane.md).
ADAPT_VALIDATION_CROPS = 32
ADAPT_CHECK_STEPS = 50
ADAPT_PATIENCE = 4
ADAPT_MIN_GAIN = 0.0
ADAPT_FULL_VOXELS = 8_000_000
ADAPT_MIN_SHARE = 0.4
ADAPT_SEED = 0
# Slice profile of the thick slices (slice_profiles.py): "box" (an ideal slab
# of the slice thickness) or "gaussian" (FWHM = the slice thickness).  The
# thickness is read from the DICOM header or a BIDS sidecar (--slice-thickness
# overrides; else the slice spacing).
SLICE_PROFILE = "box"
# Each network's through-plane presets, in one table (predict.py's --help and docs/flags.md are made from
# it; --ensemble, --adapt-steps and --adapt-keep override them for one run):
#
# "flips": flips averaged at inference (self-ensemble): 1 = none, 2 = also the fine axis reversed, 4 =
#   also the slice axis reversed; each costs one more pass.  A pass and an adaptation step cost the
#   quality network several times the ESPCN's, so it takes fewer of each to keep a head's two volumes
#   inside 180 s on 2 cores (4 flips added +0.04 to +0.06 dB at 4.5x the time; docs/performance.md).
#
# "adapt_steps": adaptation takes this many steps on volumes whose working output has up to
#   ADAPT_FULL_VOXELS voxels, proportionally fewer on larger ones (whose inference takes longer), at
#   least ADAPT_MIN_SHARE of them (800 of the ESPCN's 2000; 160 of the quality network's 400;
#   docs/through-plane.md): a number from the volume, never from the
#   clock, so the same input gives the same voxels on any machine at any load; the time budget above
#   is only a cap, with a warning when it cuts adaptation short.  Every random draw of adaptation comes
#   from ADAPT_SEED.  The ESPCN's 2000 (500 until release 0.30, with a working grid that resampled
#   0.87 mm pixels to 1 mm and 1 mm ones to 0.87): on three held-out heads +2.13 dB mean over cubic
#   B-spline against +1.91 with 500 steps, 41-51 s a head (2-core AMD EPYC, AVX-512 BF16); the other
#   scanner's head gains most from the longer adaptation (docs/through-plane.md, *The working grid
#   keeps near axes*).  The quality network's 400 (100 until release 0.31): on the same heads +3.05
#   against +3.01 dB, on the three clinical geometries +1.97 against +1.91, 45-51 s a head and 28-30 s
#   a clinical volume on that EPYC; on it capped to AVX2 (float32) 144 s for the largest head and
#   81-87 s a clinical volume (benchmark.py), inside the 180 s and 120 s budgets (docs/through-plane.md).
#
# "adapt_keep": how much of adaptation's change to the weights is kept: the model used is start +
#   keep * (adapted - start), a point between the pretrained and the adapted model in weight space
#   (weight-space ensembling, as WiSE-FT does for fine-tuned models, Wortsman et al. 2022); its output
#   is, within 0.01 dB, the average of the two models' outputs at no extra cost.  For the quality
#   network a quarter: on the 14 volumes of 7 held-out heads (6 of the training scanner, 1 of another)
#   it gained +2.54 dB mean over cubic B-spline, weakest +1.83, against +2.48 / +1.73 for half (the
#   share chosen for the weaker third-stage models) and +2.54 / +1.81 for none (docs/through-plane.md,
#   *Keeping part of the adaptation*).
#
# "adapt_keep_wide": the share kept on widely spaced slices, a spacing / in-plane pixel ratio of
#   WIDE_RATIO or more (clinical 5-6 mm slices; beyond the ~4.6 of any thick slices the quality network
#   was trained on, which it refines at x4 on a grid coarser than their pixels).  On 14 such volumes
#   simulated from 7 held-out heads (ratios 5-13.8, as ../shared/bench/clinical_geometry.py makes
#   them) the whole change gained the quality network +1.91 dB mean over cubic B-spline against +1.83
#   for a quarter (12 of the 14 better, one 0.01 worse); on 10 volumes of ratio 2-3.5 it lost 0.05 dB
#   on average to a quarter.
NETWORK_PRESETS = {
    "espcn": {"flips": 4, "adapt_steps": 2000, "adapt_keep": 1.0, "adapt_keep_wide": 1.0},
    "quality": {"flips": 1, "adapt_steps": 400, "adapt_keep": 0.25, "adapt_keep_wide": 1.0},
}
WIDE_RATIO = 5.0

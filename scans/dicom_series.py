"""DICOM image series read as volumes, and volumes written back as new DICOM series.

A series (the files sharing a SeriesInstanceUID) becomes one volume as the
DICOM standard defines it, never from file names or InstanceNumber: slices
sorted by ImagePositionPatient projected on the slice normal (the cross
product of the two ImageOrientationPatient vectors), slice spacing from those
positions (SliceThickness is not the spacing), PixelSpacing as (row, column)
spacing, RescaleSlope/RescaleIntercept carried as NIfTI scl_slope/scl_inter
(or applied, into float32, where slices differ in them), LPS patient
coordinates turned into NIfTI's RAS, oblique orientations kept.  Array axis 0
runs along a row (ImageOrientationPatient[:3]), axis 1 down the columns, axis 2
across the slices in position order.

Decisions:
- A gap (positions not evenly spaced within 1 %) refuses the series: a volume
  has one slice spacing, and filling a missing slice would invent it.
- Slices at one position are kept once when identical in pixels and rescale
  (copies of one file); if they differ (several echoes or time points in one
  series) the series is refused.
- Slices not stacked along their normal (tilted more than MAX_TILT_DEGREES,
  e.g. a CT gantry tilt) are refused: the volume's grid would be sheared.
- MONOCHROME1 is inverted within its bit depth (v -> 2**BitsStored - 1 - v,
  or -1 - v when signed) into MONOCHROME2; outputs are MONOCHROME2.
- Enhanced (multi-frame) images are read frame by frame from their per-frame
  functional groups (PlanePositionSequence, PlaneOrientationSequence,
  PixelMeasuresSequence, PixelValueTransformationSequence), falling back to
  the shared ones; a multi-frame file without them is skipped with a note.
- Compressed pixel data (JPEG, JPEG-LS, JPEG 2000, RLE) is decoded by
  whichever pydicom plugins are installed; otherwise one line says what to
  install.
- Non-image objects (no pixel data), DICOMDIRs (silently), unreadable and
  truncated files are left out of every series, with a note.
- A series is written uncompressed (explicit VR little endian) as MR Image
  Storage (CT Image Storage for a CT input); float volumes, which DICOM
  images cannot hold, as uint16 with the rescale that spans their range.

Messages name files by their base name and series by number and description,
never by patient data; the patient and study attributes go into a written
series exactly as they came.
"""
import copy
import datetime
import os
import struct
import warnings
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import generate_uid

from common.atomic_files import write_folder_atomically
import constants

UNIFORM_TOLERANCE = 0.01  # relative spread of slice gaps still called even (the 1 %)
UNIFORM_FLOOR_MM = 0.02  # ... or absolute: positions written to 2 decimals are 0.01 mm off, 2 % of 0.5 mm slices
MAX_TILT_DEGREES = 0.1  # slice stack vs. slice normal: more is a sheared (tilted) stack
SAME_POSITION_MM = 1e-3  # slices closer than this along the normal are at one position
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # DICOM's LPS patient axes to NIfTI's RAS
DEFER_BYTES = 4096  # header reads leave values this large (the pixels) on disk
EXPLICIT_VRS = {vr.value.encode() for vr in pydicom.valuerep.VR if len(vr.value) == 2}
INSTALL_HINTS = {  # what lets pydicom decode each family of compressed transfer syntaxes
    **dict.fromkeys(pydicom.uid.JPEGTransferSyntaxes, "pip install pylibjpeg pylibjpeg-libjpeg"),
    **dict.fromkeys(pydicom.uid.JPEGLSTransferSyntaxes, "pip install pylibjpeg pylibjpeg-libjpeg"),
    **dict.fromkeys(pydicom.uid.JPEG2000TransferSyntaxes, "pip install pylibjpeg pylibjpeg-openjpeg"),
    **dict.fromkeys(pydicom.uid.RLETransferSyntaxes, "pip install pylibjpeg pylibjpeg-rle"),
}
MR_IMAGE, CT_IMAGE = pydicom.uid.MRImageStorage, pydicom.uid.CTImageStorage
OUTPUT_CLASS = {  # an output's storage class: the one-frame kind of its input's; MR Image for any other
    MR_IMAGE: MR_IMAGE, pydicom.uid.EnhancedMRImageStorage: MR_IMAGE,
    CT_IMAGE: CT_IMAGE, pydicom.uid.EnhancedCTImageStorage: CT_IMAGE,
}
KEPT_ATTRIBUTES = (  # copied from the input into a written series, untouched
    "SpecificCharacterSet",
    # Patient: a derived series belongs to the same patient
    "PatientName", "PatientID", "IssuerOfPatientID", "OtherPatientIDsSequence", "PatientBirthDate",
    "PatientBirthTime", "PatientSex", "PatientAge", "PatientSize", "PatientWeight", "EthnicGroup",
    "PatientComments", "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
    # Study: it sorts under the same study
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
    "StudyDescription",
    # Frame of reference: its positions mean the same places as the input's
    "Modality", "FrameOfReferenceUID", "PositionReferenceIndicator", "BodyPartExamined", "PatientPosition",
    "AcquisitionDate", "AcquisitionTime", "AcquisitionDateTime",
    # Contrast/bolus: a post-contrast series stays marked as one
    "ContrastBolusAgent", "ContrastBolusAgentSequence", "ContrastBolusRoute", "ContrastBolusAdministrationRouteSequence",
    "ContrastBolusVolume", "ContrastBolusStartTime", "ContrastBolusStopTime", "ContrastBolusTotalDose",
    "ContrastFlowRate", "ContrastFlowDuration", "ContrastBolusIngredient", "ContrastBolusIngredientConcentration",
    # MR image and acquisition: how the contrast was made
    "ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType", "SequenceName", "AngioFlag",
    "RepetitionTime", "EchoTime", "InversionTime", "NumberOfAverages", "ImagingFrequency", "ImagedNucleus",
    "EchoNumbers", "MagneticFieldStrength", "NumberOfPhaseEncodingSteps", "EchoTrainLength", "PercentSampling",
    "PercentPhaseFieldOfView", "PixelBandwidth", "ReceiveCoilName", "TransmitCoilName", "AcquisitionMatrix",
    "InPlanePhaseEncodingDirection", "FlipAngle", "VariableFlipAngleFlag", "SAR", "dBdt", "TriggerTime",
    "AcquisitionContrast", "PulseSequenceName", "KVP",
)
# An enhanced MR file keeps acquisition attributes in functional groups; a derived (classic) series states them
# at the top level: (functional group macro, attribute in it, the classic attribute).
ENHANCED_ACQUISITION = (
    ("MRTimingAndRelatedParametersSequence", "RepetitionTime", "RepetitionTime"),
    ("MRTimingAndRelatedParametersSequence", "FlipAngle", "FlipAngle"),
    ("MRTimingAndRelatedParametersSequence", "EchoTrainLength", "EchoTrainLength"),
    ("MREchoSequence", "EffectiveEchoTime", "EchoTime"),
    ("MRModifierSequence", "InversionTimes", "InversionTime"),
    ("MRAveragesSequence", "NumberOfAverages", "NumberOfAverages"),
    ("MRReceiveCoilSequence", "ReceiveCoilName", "ReceiveCoilName"),
    ("MRTransmitCoilSequence", "TransmitCoilName", "TransmitCoilName"),
    ("MRFOVGeometrySequence", "InPlanePhaseEncodingDirection", "InPlanePhaseEncodingDirection"),
    ("MRFOVGeometrySequence", "PercentSampling", "PercentSampling"),
    ("MRFOVGeometrySequence", "PercentPhaseFieldOfView", "PercentPhaseFieldOfView"),
    ("MRImagingModifierSequence", "PixelBandwidth", "PixelBandwidth"),
)
MR_CLASSES = {MR_IMAGE, pydicom.uid.EnhancedMRImageStorage}


@dataclass
class Derivation:
    """What a written series says about how it was made."""
    description: str  # DerivationDescription, e.g. "ESPCN x4 in-plane super-resolution"
    model: str = ""  # the model file's name, in SoftwareVersions
    slice_thickness: float = None  # SliceThickness in mm; None: the slice spacing
    uid_root: str = None  # an organisation's UID root for the new UIDs (pydicom's own when None)
    network: str = ""  # the network that made it ("ESPCN", "Quality network"), its ManufacturerModelName


class Skipped(ValueError):
    """Why a file is left out of every series (its text names no value from the file)."""


def series_number(dataset):
    """SeriesNumber as an int, None if absent or unreadable."""
    try:
        return int(dataset.get("SeriesNumber"))
    except (TypeError, ValueError):
        return None


@dataclass
class Frame:
    """One 2D image of a series: a classic file, or one frame of a multi-frame file."""
    path: str
    index: int  # frame number inside its file (0 for a one-frame file)
    size: tuple  # (Rows, Columns)
    position: np.ndarray = None  # ImagePositionPatient, LPS mm
    orientation: np.ndarray = None  # ImageOrientationPatient: row direction, then column direction
    spacing: np.ndarray = None  # PixelSpacing: (between rows, between columns) mm
    thickness: float = None  # SpacingBetweenSlices or SliceThickness: a lone slice's spacing
    slice_thickness: float = None  # SliceThickness alone: the excited slab, thinner than the spacing with a gap
    rescale: tuple = (1.0, 0.0)  # (RescaleSlope, RescaleIntercept)


@dataclass
class Series:
    """The image files of one SeriesInstanceUID, in position order."""
    stem: str
    files: list
    description: str
    frames: list = field(repr=False, default_factory=list)
    number: int = None


# --- Finding series ------------------------------------------------------------

def is_dicom(path):
    """True for a DICOM file by its first bytes (never raises): "DICM" after the 128-byte preamble, or a bare
    data set (older files without preamble) that starts with a group 0002 or 0008 element."""
    try:
        with open(path, "rb") as stream:
            head = stream.read(132)
    except OSError:
        return False
    if head[128:132] == b"DICM":
        return True
    if len(head) < 8 or struct.unpack("<H", head[:2])[0] not in (0x0002, 0x0008):
        return False
    # explicit VR: two letters of a VR; implicit VR: a 4-byte length, short for these first elements
    return head[4:6] in EXPLICIT_VRS or struct.unpack("<I", head[4:8])[0] < 1024


def find_series(paths):
    """The image series among DICOM files, and one-line notes on the files left out.

    Args:
        paths: DICOM files, from any folders; a file given twice counts once.

    Returns:
        (list of Series, list of notes), series in the order their first file came.
    """
    groups, notes = {}, []
    for path in dict.fromkeys(paths):
        try:
            frames, uid, number, label = header_of(path)
        except ValueError as error:
            notes.append(f"{path}: {error}; skipped")
            continue
        if frames:
            groups.setdefault(uid or path, ([], number, label))[0].extend(frames)
    series = [make_series(frames, number, label) for frames, number, label in groups.values()]
    name_series(series)
    return series, notes


def header_of(path):
    """(frames, SeriesInstanceUID, SeriesNumber, SeriesDescription) of one file; no frames for a DICOMDIR.

    ValueError for a file that is not a readable, complete image.  Pixels stay on disk (deferred).
    """
    if not is_dicom(path):
        raise Skipped("not a DICOM file")
    with warnings.catch_warnings():  # pydicom warns as it parses values, quoting them (patient data)
        warnings.simplefilter("ignore")
        try:
            header = pydicom.dcmread(path, defer_size=DEFER_BYTES, force=True)
            sop_class = header.get("SOPClassUID") or header.file_meta.get("MediaStorageSOPClassUID")
            if sop_class == pydicom.uid.MediaStorageDirectoryStorage or "DirectoryRecordSequence" in header:
                return [], None, None, None
            check_complete(path, header, getattr(sop_class, "name", "unrecognised"))
            return frames_of(path, header), header.get("SeriesInstanceUID"), series_number(header), \
                header.get("SeriesDescription")
        except Skipped:
            raise
        except Exception as error:  # pydicom raises many kinds; their text may quote values
            raise Skipped(f"not a readable DICOM file ({type(error).__name__})") from None


def check_complete(path, header, kind):
    """ValueError for a file without pixel data, or with less of it than declared (cut short)."""
    if "PixelData" not in header:
        if "Image Storage" in kind:  # an image class without its pixels: cut short before them
            raise Skipped(f"truncated (a {kind} object without pixel data)")
        raise Skipped(f"not an image ({kind}, no pixel data)")
    raw = header.get_item("PixelData", keep_deferred=True)  # still raw: declared length and what was read
    length = getattr(raw, "length", 0xFFFFFFFF)
    if length == 0xFFFFFFFF:  # encapsulated (compressed) frames: their decoder finds a cut
        return
    have = os.path.getsize(path) - raw.value_tell if raw.value is None else len(raw.value)
    if have < length:
        raise Skipped(f"truncated (its pixel data has {have} of {length} bytes)")


def frames_of(path, header):
    """The Frames of one file: from its own attributes, or from each frame's functional groups (enhanced)."""
    count = int(header.get("NumberOfFrames") or 1)
    per_frame = header.get("PerFrameFunctionalGroupsSequence") or []
    shared = header.get("SharedFunctionalGroupsSequence") or []
    if not (per_frame or shared) and count > 1:
        raise Skipped(f"a multi-frame image ({count} frames) without per-frame positions; not supported")

    def value(index, sequence, keyword):
        if not (per_frame or shared):
            return header.get(keyword)
        for groups in ([per_frame[index]] if index < len(per_frame) else []) + list(shared[:1]):
            macro = groups.get(sequence)
            if macro and macro[0].get(keyword) is not None:
                return macro[0].get(keyword)
        return None

    def numbers(index, sequence, keyword, length):
        found = value(index, sequence, keyword)
        found = np.array([float(v) for v in found]) if found is not None and len(found) == length else None
        return found if found is not None and np.all(np.isfinite(found)) else None

    frames = []
    for i in range(count):
        thickness = value(i, "PixelMeasuresSequence", "SpacingBetweenSlices") or \
            value(i, "PixelMeasuresSequence", "SliceThickness")
        slab = value(i, "PixelMeasuresSequence", "SliceThickness")
        slope = value(i, "PixelValueTransformationSequence", "RescaleSlope")
        inter = value(i, "PixelValueTransformationSequence", "RescaleIntercept")
        frames.append(Frame(
            path, i, (int(header.get("Rows") or 0), int(header.get("Columns") or 0)),
            numbers(i, "PlanePositionSequence", "ImagePositionPatient", 3),
            numbers(i, "PlaneOrientationSequence", "ImageOrientationPatient", 6),
            numbers(i, "PixelMeasuresSequence", "PixelSpacing", 2), float(thickness) if thickness else None,
            positive_number(slab),
            (float(slope) if slope not in (None, "", 0) else 1.0, float(inter) if inter not in (None, "") else 0.0)))
    return frames


def positive_number(value):
    """A DICOM decimal string as a positive float, or None (absent, empty, zero or not a number)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def slice_thickness(series):
    """The series' SliceThickness in mm when every frame states the same one, else None."""
    found = {frame.slice_thickness for frame in series.frames}
    return found.pop() if len(found) == 1 and None not in found else None


def normal_of(orientation):
    """The unit slice normal: row direction x column direction."""
    normal = np.cross(orientation[:3], orientation[3:])
    return normal / (np.linalg.norm(normal) or 1.0)


def make_series(frames, number, label):
    """A Series of `frames` sorted along the normal of the first one's orientation."""
    oriented = [frame.orientation for frame in frames if frame.orientation is not None]
    normal = normal_of(oriented[0]) if oriented else np.zeros(3)
    frames = sorted(frames, key=lambda f: float(f.position @ normal) if f.position is not None else 0.0)
    files = list(dict.fromkeys(frame.path for frame in frames))
    what = f"series {number}" if number is not None else "unnumbered series"
    counted = f"{len(files)} file{'s' * (len(files) != 1)}" + \
        (f", {len(frames)} frames" if len(frames) != len(files) else "")
    return Series("", files, f"{what}{f' ({label})' if label else ''}, {counted}", frames, number)


def name_series(series):
    """Sets each stem: a one-file series is named after its file; others after their folder, with
    _s<SeriesNumber> where the folder holds more than one series; _2, _3... on a stem already taken."""
    folder_of = [os.path.dirname(os.path.abspath(s.files[0])) for s in series]
    for s, folder in zip(series, folder_of):
        if len(s.files) == 1:
            s.stem = file_stem(s.files[0])
        else:
            s.stem = os.path.basename(folder) or "dicom"
            if folder_of.count(folder) > 1:
                s.stem += f"_s{s.number if s.number is not None else 'X'}"
    seen = {}
    for s in series:  # e.g. two folders of one name, or one SeriesNumber twice
        seen[s.stem] = seen.get(s.stem, 0) + 1
        if seen[s.stem] > 1:
            s.stem += f"_{seen[s.stem]}"


def file_stem(path):
    """The file name without .dcm/.dicom/.ima (not splitext: names like 1.3.12.2.1107 are all stem)."""
    name = os.path.basename(path)
    for suffix in (".dcm", ".dicom", ".ima"):
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return name


# --- Reading a series as a volume ------------------------------------------------

def load_series(series):
    """The series as a nibabel Nifti1Image that reads like a NIfTI file from disk.

    Its proxy holds the stored integers with their rescale as scl_slope/scl_inter (float32 real values if
    slices differ in rescale); the affine is RAS, also as qform and sform with code 1 (scanner).

    Raises:
        ValueError: one line naming the series (and a file) for a series that is not one regular volume.
    """
    frames = series.frames
    check_geometry(series, frames)
    pixels = read_pixels(series)
    frames, pixels = drop_copies(series, frames, pixels)
    affine = series_affine(series, frames)
    rescales = {frame.rescale for frame in frames}
    if len(rescales) == 1:
        data, (slope, inter) = np.stack(pixels, axis=-1), rescales.pop()
    else:
        data, slope, inter = np.stack([p * s + i for p, (s, i) in zip(pixels, (f.rescale for f in frames))],
                                      axis=-1).astype(np.float32), 1.0, 0.0
    return as_nifti(data, affine, slope, inter)


def fail(series, reason):
    return ValueError(f"{series.description}: {reason}")


def check_geometry(series, frames):
    """Refuses frames without patient geometry, or that differ in orientation, pixel spacing or size."""
    for frame in frames:
        if frame.position is None or frame.orientation is None or frame.spacing is None:
            raise fail(series, f"{os.path.basename(frame.path)} has no ImagePositionPatient, "
                               "ImageOrientationPatient or PixelSpacing (no place in the patient)")
        row, column = frame.orientation[:3], frame.orientation[3:]
        if abs(row @ row - 1) > 1e-2 or abs(column @ column - 1) > 1e-2 or abs(row @ column) > 1e-2 \
                or np.any(frame.spacing <= 0):
            raise fail(series, f"{os.path.basename(frame.path)}: its ImageOrientationPatient is not two "
                               "perpendicular unit vectors, or its PixelSpacing not positive")
    first = frames[0]
    for frame in frames[1:]:
        for what, same in (("orientations", np.allclose(frame.orientation, first.orientation, atol=1e-4)),
                           ("pixel spacings", np.allclose(frame.spacing, first.spacing, rtol=1e-4)),
                           ("sizes (Rows/Columns)", frame.size == first.size)):
            if not same:
                raise fail(series, f"slices of different {what} ({os.path.basename(first.path)}, "
                                   f"{os.path.basename(frame.path)}); not one volume")


def read_pixels(series):
    """Each frame's pixels as (Rows, Columns) in MONOCHROME2, each file decoded once."""
    decoded = {path: decoded_pixels(series, path) for path in series.files}
    return [decoded[frame.path][frame.index] for frame in series.frames]


def decoded_pixels(series, path):
    name = os.path.basename(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(path, force=True)
        syntax = dataset.file_meta.get("TransferSyntaxUID")
        try:
            pixels = dataset.pixel_array
        except Exception as error:  # each decoder plugin raises its own kind
            if syntax in INSTALL_HINTS:
                raise fail(series, f"{name}: its pixel data is compressed as {syntax.name}, which no installed "
                                   f"pydicom plugin decodes ({INSTALL_HINTS[syntax]})") from None
            text = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
            raise fail(series, f"{name}: its pixel data cannot be read ({text})") from None
    if int(dataset.get("SamplesPerPixel") or 1) != 1:
        raise fail(series, f"{name} holds colour pixels; this tool super-resolves greyscale images")
    pixels = pixels.reshape((-1,) + pixels.shape[-2:])  # one frame or many: (frames, rows, columns)
    pixels = pixels.astype(pixels.dtype.newbyteorder("="), copy=False)
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":
        bits = int(dataset.get("BitsStored") or pixels.dtype.itemsize * 8)
        pixels = np.invert(pixels) if pixels.dtype.kind == "i" else pixels.dtype.type(2 ** bits - 1) - pixels
    return pixels


def drop_copies(series, frames, pixels):
    """Keeps one of the slices at a position if they are identical; refuses different ones there."""
    kept_frames, kept_pixels = [frames[0]], [pixels[0]]
    normal = normal_of(frames[0].orientation)
    for frame, plane in zip(frames[1:], pixels[1:]):
        if abs((frame.position - kept_frames[-1].position) @ normal) >= SAME_POSITION_MM:
            kept_frames.append(frame)
            kept_pixels.append(plane)
        elif frame.rescale != kept_frames[-1].rescale or not np.array_equal(plane, kept_pixels[-1]):
            raise fail(series, f"{os.path.basename(kept_frames[-1].path)} and {os.path.basename(frame.path)} "
                               "are different slices at one position (several echoes, times or acquisitions "
                               "in one series?); not one volume")
    return kept_frames, kept_pixels


def series_affine(series, frames):
    """The RAS affine of the stack; refuses uneven gaps and stacks that are not along their normal."""
    orientation = frames[0].orientation
    normal = normal_of(orientation)
    positions = np.array([frame.position for frame in frames])
    if len(frames) == 1:
        spacing = frames[0].thickness or 1.0
    else:
        along = positions @ normal
        gaps, spacing = np.diff(along), (along[-1] - along[0]) / (len(frames) - 1)
        worst = int(np.argmax(np.abs(gaps - spacing)))
        if abs(gaps[worst] - spacing) > max(UNIFORM_TOLERANCE * spacing, UNIFORM_FLOOR_MM):
            raise fail(series, f"slice positions are not evenly spaced ({gaps.min():.4g} to {gaps.max():.4g} "
                               f"mm apart, e.g. after {os.path.basename(frames[worst].path)}): a missing slice?")
        stack = positions[-1] - positions[0]
        tilt = np.degrees(np.arccos(np.clip(stack @ normal / np.linalg.norm(stack), -1, 1)))
        if tilt > MAX_TILT_DEGREES:
            raise fail(series, f"slices are stacked {tilt:.2f} degrees off their normal (e.g. a gantry tilt); "
                               "a sheared volume is not supported")
    row_spacing, column_spacing = frames[0].spacing
    affine = np.eye(4)  # (unit vectors: the files' may be rounded off to a few digits)
    affine[:3, 0] = orientation[:3] / np.linalg.norm(orientation[:3]) * column_spacing  # axis 0: along a row
    affine[:3, 1] = orientation[3:] / np.linalg.norm(orientation[3:]) * row_spacing  # axis 1: down a column
    affine[:3, 2] = normal * spacing
    affine[:3, 3] = positions[0]
    return LPS_TO_RAS @ affine


def as_nifti(planes, affine, slope, inter):
    """A NIfTI image of (rows, columns, slices) planes that behaves like one read from a file."""
    data = np.ascontiguousarray(planes.transpose(1, 0, 2))  # DICOM rows are array axis 1
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    if (slope, inter) != (1.0, 0.0):
        image.header.set_slope_inter(slope, inter)
    # a round trip through bytes gives the on-disk behaviour: an ArrayProxy with .slope/.inter
    return nib.Nifti1Image.from_bytes(image.to_bytes())


# --- Writing a volume as a series ------------------------------------------------

def write_series(series, image, out_dir, description_suffix, derivation=None):
    """Writes `image` (a 3D volume on its own grid) as a new DICOM series, one file a slice, atomically.

    Args:
        series: the input Series; its first file lends the patient, study, frame-of-reference, contrast and
            acquisition attributes (KEPT_ATTRIBUTES, and ENHANCED_ACQUISITION from an enhanced file).
        image: a nibabel image of stored values with their scl_slope/scl_inter (as volumes.resampled_image).
        out_dir: the folder to create; an earlier output there (a folder of .dcm files only) is replaced.
        description_suffix: appended to the input's SeriesDescription, e.g. " ESPCN x4".
        derivation: a Derivation (description, model, SliceThickness, UID root); None: the suffix says it all.

    Raises:
        ValueError: a grid that is not a rotation times voxel sizes, a volume that is not 3D, or an out_dir
            that is something else than an earlier output.
    """
    if len(image.shape) != 3:
        raise ValueError(f"a {len(image.shape)}D volume; a DICOM series holds one 3D volume")
    derivation = derivation or Derivation(description_suffix.strip())
    directions, spacings, origin = grid_of(image)
    values, slope, inter = stored_pixels(image)
    check_replaceable(out_dir)

    def write(folder):
        template = pydicom.dcmread(series.files[0], stop_before_pixels=True, force=True)
        shared = series_dataset(template, description_suffix, values.dtype, slope, inter, derivation)
        shared.SourceImageSequence = source_images(series)
        shared.ImageOrientationPatient = ds_values(np.round(np.concatenate([directions[:, 0], directions[:, 1]]), 7))
        shared.PixelSpacing = ds_values([spacings[1], spacings[0]])  # (between rows, between columns)
        shared.SliceThickness = ds_values([derivation.slice_thickness or spacings[2]])[0]
        shared.SpacingBetweenSlices = ds_values([spacings[2]])[0]
        shared.Rows, shared.Columns = values.shape[1], values.shape[0]
        for k in range(values.shape[2]):
            dataset = copy.deepcopy(shared)
            dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = new_uid(derivation)
            dataset.InstanceNumber = k + 1
            dataset.ImagePositionPatient = ds_values(origin + k * spacings[2] * directions[:, 2])
            plane = np.ascontiguousarray(values[:, :, k].T)  # array axis 1 is the DICOM row index
            dataset.PixelData = plane.astype(plane.dtype.newbyteorder("<")).tobytes()
            pydicom.dcmwrite(os.path.join(folder, f"{k + 1:05d}.dcm"), dataset, enforce_file_format=True)

    with warnings.catch_warnings():  # pydicom's warnings may quote the patient data it copies
        warnings.simplefilter("ignore")
        write_folder_atomically(out_dir, write, check=check_replaceable)


def new_uid(derivation):
    return generate_uid(prefix=derivation.uid_root) if derivation.uid_root else generate_uid()


def check_uid_root(text):
    """An organisation's UID root for --uid-root ("1.2.840.99999" or with its final dot); ValueError in words."""
    root = text if text.endswith(".") else text + "."
    parts = root[:-1].split(".")
    if not all(part.isdigit() and (part == "0" or not part.startswith("0")) for part in parts) or len(root) > 40:
        raise ValueError(f"{text!r} is not a UID root: numbers without leading zeros joined by dots, at most "
                         "40 characters (room for the rest of a 64-character UID)")
    return root


def source_images(series):
    """SourceImageSequence: one item per source image (file, and frame of an enhanced file) the series came from."""
    items, headers = [], {}
    for frame in series.frames:
        if frame.path not in headers:
            headers[frame.path] = pydicom.dcmread(frame.path, stop_before_pixels=True, force=True,
                                                  specific_tags=["SOPClassUID", "SOPInstanceUID", "NumberOfFrames"])
        header = headers[frame.path]
        if "SOPInstanceUID" not in header:
            continue
        item = Dataset()
        item.ReferencedSOPClassUID = header.get("SOPClassUID") or MR_IMAGE
        item.ReferencedSOPInstanceUID = header.SOPInstanceUID
        if int(header.get("NumberOfFrames") or 1) > 1:
            item.ReferencedFrameNumber = frame.index + 1
        items.append(item)
    return pydicom.Sequence(items)


def check_modality(series):
    """ValueError in one line for a series that is not MR (Modality and storage class): what the models know."""
    header = pydicom.dcmread(series.files[0], stop_before_pixels=True, force=True,
                             specific_tags=["Modality", "SOPClassUID"])
    modality, sop_class = str(header.get("Modality") or "").upper(), header.get("SOPClassUID")
    if modality not in ("", "MR") or (sop_class and sop_class not in MR_CLASSES):
        kind = getattr(sop_class, "name", None) or "no storage class"
        raise fail(series, f"Modality {modality or 'not given'} ({kind}): the models were trained on MR images "
                           "only; not super-resolved")


def grid_of(image):
    """(unit axis directions as columns, voxel sizes, origin) of `image`'s grid in LPS; ValueError if sheared."""
    affine = LPS_TO_RAS @ image.affine  # its own inverse
    spacings = np.linalg.norm(affine[:3, :3], axis=0)
    directions = affine[:3, :3] / spacings
    if not np.allclose(directions.T @ directions, np.eye(3), atol=1e-5):
        raise ValueError("its grid is sheared (the affine is not a rotation times voxel sizes); a DICOM series "
                         "cannot hold it")
    return directions, spacings, affine[:3, 3]


def stored_pixels(image):
    """(integer array, slope, intercept) to write: the stored values, or float values quantised to uint16."""
    dataobj = image.dataobj
    if hasattr(dataobj, "get_unscaled"):  # read from a file: the proxy holds stored values and their scaling
        values, slope, inter = np.asarray(dataobj.get_unscaled()), dataobj.slope, dataobj.inter
    else:
        values, (slope, inter) = np.asarray(dataobj), image.header.get_slope_inter()
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    if values.dtype.kind in "iu" and values.dtype.itemsize <= 4:
        return values, slope, inter
    # DICOM MR and CT images store integers: span the real values' range with 65536 levels, with a rescale
    # rounded as it will be written, so that reading applies exactly the one used here
    real = np.nan_to_num(values.astype(np.float64) * slope + inter)
    low, step = (float(v) for v in ds_values([real.min(), (real.max() - real.min()) / 65535 or 1.0]))
    return np.clip(np.round((real - low) / step), 0, 65535).astype(np.uint16), step, low


def series_dataset(template, description_suffix, dtype, slope, inter, derivation):
    """The attributes every slice of the new series shares: the input's patient, study and acquisition, new
    UIDs, dates and equipment (this software, not the scanner)."""
    dataset = Dataset()
    for keyword in KEPT_ATTRIBUTES:
        if keyword in template:
            dataset.add(copy.deepcopy(template.data_element(keyword)))  # as it came: no re-validation
    for keyword, value in enhanced_acquisition(template).items():
        if keyword not in dataset:
            setattr(dataset, keyword, value)
    dataset.SOPClassUID = OUTPUT_CLASS.get(template.get("SOPClassUID"), MR_IMAGE)
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    dataset.SeriesInstanceUID = new_uid(derivation)
    number = series_number(template)
    if number is not None:
        dataset.SeriesNumber = number + 1000  # its own number, listed apart from the input's
    kept = max(0, 64 - len(description_suffix))  # LO: at most 64 characters
    dataset.SeriesDescription = (str(template.get("SeriesDescription") or "")[:kept] + description_suffix).strip()
    dataset.DerivationDescription = derivation.description[:1024]
    dataset.ImageType = ["DERIVED", "SECONDARY"]
    now = datetime.datetime.now()
    dataset.SeriesDate = dataset.ContentDate = dataset.InstanceCreationDate = now.strftime("%Y%m%d")
    dataset.SeriesTime = dataset.ContentTime = dataset.InstanceCreationTime = now.strftime("%H%M%S")
    dataset.Manufacturer = constants.PROJECT_NAME  # the equipment that made this series: this software
    if derivation.network:
        dataset.ManufacturerModelName = derivation.network  # the equipment's model: the network that ran
    dataset.SoftwareVersions = [constants.VERSION] + ([derivation.model] if derivation.model else [])
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated = dataset.BitsStored = dtype.itemsize * 8
    dataset.HighBit, dataset.PixelRepresentation = dtype.itemsize * 8 - 1, int(dtype.kind == "i")
    dataset.RescaleSlope, dataset.RescaleIntercept = ds_values([slope, inter])
    return dataset


def enhanced_acquisition(template):
    """{classic attribute: value} of an enhanced file's shared (else first per-frame) functional groups."""
    found = {}
    for groups_keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = template.get(groups_keyword)
        if not groups:
            continue
        for macro, inner, classic in ENHANCED_ACQUISITION:
            item = groups[0].get(macro)
            value = item[0].get(inner) if item else None
            if value is not None and classic not in found:
                many = isinstance(value, (list, tuple, pydicom.multival.MultiValue))
                found[classic] = value[0] if many and classic == "InversionTime" else value  # InversionTimes: 1..n
    return found


def ds_values(numbers):
    """Numbers as DICOM decimal strings of 7 significant digits: the precision of the NIfTI header (float32)
    a grid comes through; more digits would write its rounding noise (0.22499999 for 0.225)."""
    return [f"{float(n) + 0.0:.7g}" for n in numbers]  # + 0.0: no "-0"


def check_replaceable(out_dir):
    if os.path.lexists(out_dir) and not (os.path.isdir(out_dir) and not os.path.islink(out_dir)
                                         and all(name.endswith(".dcm") for name in os.listdir(out_dir))):
        raise ValueError(f"{out_dir} exists and is not an earlier output (a folder of .dcm files); "
                         "not replacing it")

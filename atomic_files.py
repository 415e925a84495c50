"""Files written so that no reader ever sees half of one, and no planted link redirects a write.

Every output of the project (models, figures, JSON, images, volumes, DICOM
series) goes through `write_atomically`: a library module's job, not the
command line's, so it lives here rather than in cli.py.
"""
import json
import os
import tempfile


def write_atomically(path, write):
    """Calls write(tmp_path), then renames tmp_path to path: `path` is never half-written.

    The temporary file is created exclusively (O_CREAT | O_EXCL, which never
    follows a symlink) under a fresh random name beside the target, so a link
    planted in the output folder cannot redirect the write onto another file
    (an input, say), and two writers of one target never share a temporary.
    Its name ends with the target's own name, so savers that pick the format
    from the suffix (Keras, nibabel, matplotlib) see the right one.  The
    rename replaces a link at `path` itself, never the file it points to.  The
    temporary is removed if writing fails.
    """
    folder, name = os.path.split(path)
    handle, tmp_path = tempfile.mkstemp(prefix=".partial-", suffix=f"-{name}", dir=folder or ".")
    os.close(handle)
    try:
        os.chmod(tmp_path, 0o666 & ~current_umask())  # mkstemp makes it private (0600)
        write(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if os.path.lexists(tmp_path):
            os.remove(tmp_path)


def current_umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path, values):
    """Writes `values` as indented JSON to `path`, atomically (write_atomically)."""
    def write(tmp_path):
        with open(tmp_path, "w") as out:
            json.dump(values, out, indent=2)

    write_atomically(path, write)

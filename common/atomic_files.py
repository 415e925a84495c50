"""Files and folders written so that no reader ever sees half of one, and no planted link redirects a write.

Every output of the project (models, figures, JSON, images, volumes) goes
through `write_atomically`, every folder (DICOM series, the embedded sample,
training backups) through `write_folder_atomically`: a library module's job,
not the command line's, so it lives here rather than in cli.py.

Temporaries are hidden siblings named `.partial-<host>-<pid>-...`.  A writer
killed outright (SIGKILL, power loss) cannot remove its own, and a DICOM one
holds a whole series of patient data; so every folder write first removes
the temporaries of this host's writers that no longer run
(`remove_dead_partials`), and predict.py does so in its output folder.
"""
import json
import os
import shutil
import socket
import tempfile

PARTIAL = ".partial-"


def partial_prefix():
    """The temporary-name prefix of this process: who made a temporary, so that its leftovers can be found."""
    return f"{PARTIAL}{socket.gethostname().replace('-', '_')}-{os.getpid()}-"


def remove_dead_partials(folder):
    """Removes `folder`'s temporaries (files or folders) left by writers of this host that no longer run.

    Returns their names.  Temporaries of running processes, and of other hosts
    (a shared file system), are left alone.
    """
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    host = socket.gethostname().replace("-", "_")
    for name in names:
        parts = name[len(PARTIAL):].split("-", 2) if name.startswith(PARTIAL) else []
        if len(parts) < 3 or parts[0] != host or not parts[1].isdigit() or process_runs(int(parts[1])):
            continue
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.remove(path)
            except OSError:
                continue
        removed.append(name)
    return removed


def process_runs(pid):
    """True when process `pid` runs on this host (or cannot be told apart from one that does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    handle, tmp_path = tempfile.mkstemp(prefix=partial_prefix(), suffix=f"-{name}", dir=folder or ".")
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


def write_folder_atomically(out_dir, write, *, replace=True, check=None, durable=False):
    """Calls write(folder) on a fresh hidden sibling of out_dir, then renames it to out_dir: whole or absent.

    Args:
        out_dir: the folder to create.
        write: fills the (empty) folder it is given.
        replace: an earlier out_dir is swapped out and removed once the new one is in place; with False an
            out_dir that exists when the new one is done (the same result, made by another process) is kept.
        check: called as check(out_dir) just before an earlier out_dir is replaced (raises to refuse).
        durable: each file and the folders are flushed to disk before and after the rename (backups).
    The temporary is removed when writing fails, and dead writers' leftovers
    beside out_dir first (remove_dead_partials).
    """
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    remove_dead_partials(parent)
    folder = tempfile.mkdtemp(prefix=partial_prefix(), dir=parent)
    old = None
    try:
        os.chmod(folder, 0o777 & ~current_umask())  # mkdtemp makes it private (0700)
        write(folder)
        if durable:
            flush_to_disk(folder)
        if os.path.lexists(out_dir):
            if not replace:
                return
            if check is not None:
                check(out_dir)
            old = tempfile.mkdtemp(prefix=partial_prefix() + "old-", dir=parent)
            os.replace(out_dir, old)  # onto an empty folder: allowed
        try:
            os.replace(folder, out_dir)
        except OSError:
            if old:
                os.replace(old, out_dir)  # the earlier output back in place
                old = None
            elif not replace and os.path.isdir(out_dir):
                return  # another process's result arrived first
            raise
        if durable:
            flush_to_disk(parent, files=False)
    finally:
        for leftover in (folder, old):
            if leftover and os.path.lexists(leftover):
                shutil.rmtree(leftover, ignore_errors=True)


def flush_to_disk(folder, files=True):
    """fsync of the files directly in `folder`, then of the folder itself, so a rename after it is durable."""
    paths = [os.path.join(folder, name) for name in os.listdir(folder)] if files else []
    for path in paths + [folder]:
        try:
            handle = os.open(path, os.O_RDONLY)
        except OSError:  # e.g. folders cannot be opened on Windows; nothing more can be done there
            continue
        try:
            os.fsync(handle)
        except OSError:
            pass
        finally:
            os.close(handle)

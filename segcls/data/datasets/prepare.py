"""
What every ``datasets/prepare_*.py`` script shares: a preparation is a list of :class:`Step` s
(one folder of files to write for one split), run by :func:`run_preparation`, which

- checks every split's size against the official count first and names each mismatch (stopping
  unless ``--allow-size-mismatch``, e.g. for a deliberate subset);
- writes each output file atomically and skips files that already exist, so running a script
  again does nothing and an interrupted run resumes without half-written files;
- shows progress, and names the source file in any conversion error.

Label files are read with :func:`segcls.data.dataset_mapper.read_label_image` (unconverted,
single-channel, colour images rejected), the same function the mapper uses.
"""
import argparse
import os
import shutil
import sys
import time
from collections import namedtuple

import numpy as np

from segcls.utils.io import atomic_save_image, atomic_write, remove_stale_temp_files

from ..dataset_mapper import present_values, read_label_image
from .sem_seg import DatasetNotFoundError, get_datasets_root

Step = namedtuple("Step", ["split", "what", "source", "jobs", "write"])
Step.__doc__ = """
One folder to prepare: ``write(src, dst)`` for every ``(src, dst)`` of ``jobs``. ``split`` names
the split whose size ``len(jobs)`` is checked, ``what`` says what is written (progress line) and
``source`` where the split's files come from (named in a size mismatch).
"""


class PreparationError(RuntimeError):
    """A source file could not be converted; the message names it."""


def list_files(folder, suffix, layout_help=""):
    """Sorted paths, relative to ``folder``, of the files under it (subfolders included) whose name
    ends with ``suffix``. Raises :class:`DatasetNotFoundError` naming ``folder`` if it is missing."""
    if not os.path.isdir(folder):
        raise DatasetNotFoundError(f"directory '{folder}' does not exist. {layout_help}".rstrip())
    return sorted(
        os.path.relpath(os.path.join(dirpath, name), folder)
        for dirpath, _, names in os.walk(folder)
        for name in names
        if name.endswith(suffix)
    )


def read_split_file(path, layout_help=""):
    """The non-empty lines of a split list (``ImageSets/.../train.txt``); raises
    :class:`DatasetNotFoundError` naming ``path`` if it is missing."""
    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"split file '{path}' does not exist. {layout_help}".rstrip())
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def label_lookup_table(mapping, size=256):
    """A (size,) int64 table with ``table[value] = mapping[value]`` and -1 (value must not occur) elsewhere."""
    table = np.full(size, -1, dtype=np.int64)
    for value, train_id in mapping.items():
        table[value] = train_id
    return table


def apply_label_table(label, table):
    """Map every value of ``label`` through ``table`` (see :func:`label_lookup_table`) to uint8;
    raises ValueError listing the values the table does not allow."""
    values = present_values(label)
    inside = (values >= 0) & (values < len(table))
    bad = np.concatenate([values[~inside], values[inside][table[values[inside]] < 0]])
    if bad.size:
        allowed = np.flatnonzero(table >= 0)
        raise ValueError(
            f"unexpected label values {sorted(bad.tolist())[:10]}: expected values among "
            f"{allowed.min()}..{allowed.max()} ({len(allowed)} allowed)"
        )
    return table[label].astype(np.uint8)


def label_writer(convert, read=read_label_image):
    """A ``write(src, dst)`` that saves ``convert(read(src))`` to ``dst`` as a PNG, atomically."""

    def write(src, dst):
        atomic_save_image(convert(read(src)), dst)

    return write


def copy_file(src, dst):
    """Copy ``src`` to ``dst`` atomically (``write`` for steps that only copy, e.g. images)."""
    with open(src, "rb") as fsrc, atomic_write(dst) as fdst:
        shutil.copyfileobj(fsrc, fdst)


def process_files(jobs, write, progress=None):
    """
    Call ``write(src, dst)`` for every ``(src, dst)`` of ``jobs`` whose ``dst`` does not exist yet
    (``write`` must write atomically, as :func:`label_writer` and :func:`copy_file` do); calls
    ``progress(done, total)`` after each job. Temporary files of an interrupted earlier run are
    removed from the destination folders first. Returns the number of files written.

    Raises:
        PreparationError: ``write`` failed; the message names ``src`` and the cause.
    """
    for folder in {os.path.dirname(dst) for _, dst in jobs}:
        remove_stale_temp_files(folder)
    written = 0
    for i, (src, dst) in enumerate(jobs):
        if not os.path.exists(dst):
            try:
                write(src, dst)
            except Exception as e:  # any decoding/validation error: re-raised naming the file
                raise PreparationError(f"cannot prepare '{dst}' from '{src}': {e}") from e
            written += 1
        if progress is not None:
            progress(i + 1, len(jobs))
    return written


def progress_printer(desc, stream=None, interval=0.2):
    """A ``progress(done, total)`` callback printing ``desc: done/total`` on one line (at most every
    ``interval`` seconds, always at the end)."""
    stream = sys.stderr if stream is None else stream
    last = [0.0]

    def progress(done, total):
        now = time.monotonic()
        if done == total or now - last[0] >= interval:
            last[0] = now
            print(f"\r{desc}: {done}/{total}", end="\n" if done == total else "", file=stream, flush=True)

    return progress


def split_sizes(steps):
    """{split: number of files} of a preparation (the first step of each split counts)."""
    sizes = {}
    for step in steps:
        sizes.setdefault(step.split, (len(step.jobs), step.source))
    return sizes


def check_split_sizes(dataset, steps, official_sizes):
    """Messages naming every split whose size differs from ``official_sizes`` ({split: count}); [] if all match."""
    sizes = split_sizes(steps)
    messages = []
    for split, expected in official_sizes.items():
        found, source = sizes.get(split, (0, "nothing"))
        if found != expected:
            messages.append(f"{dataset} split '{split}' has {found} files in {source}, the official split has {expected}")
    return messages


def run_preparation(dataset, plan, official_sizes, argv=None, description=None):
    """
    The whole of a ``datasets/prepare_*.py`` script: parse ``--root`` (default
    ``$DETECTRON2_DATASETS``, else ``./datasets``) and ``--allow-size-mismatch``, build the steps
    with ``plan(root)``, check the split sizes, then run every step. Returns ``{split: files
    written}``. Exits with a message (status 1) if a source folder is missing or, without
    ``--allow-size-mismatch``, a split's size differs from the official count.
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=get_datasets_root(), help="datasets root (default: %(default)s)")
    parser.add_argument(
        "--allow-size-mismatch",
        action="store_true",
        help="prepare the data even if a split's size differs from the official count (e.g. a subset)",
    )
    args = parser.parse_args(argv)
    try:
        steps = plan(args.root)
    except DatasetNotFoundError as e:
        raise SystemExit(f"error: {e}") from None
    mismatches = check_split_sizes(dataset, steps, official_sizes)
    if mismatches and not args.allow_size_mismatch:
        raise SystemExit(
            "error: " + "; ".join(mismatches) + ". Complete the download, or pass --allow-size-mismatch to "
            "prepare these files anyway."
        )
    for message in mismatches:
        print(f"warning: {message}", file=sys.stderr)
    written = {}
    for step in steps:
        n = process_files(step.jobs, step.write, progress_printer(f"{dataset} {step.split}: {step.what}"))
        print(f"{dataset} {step.split}: {step.what}: {n} written, {len(step.jobs) - n} already there")
        written[step.split] = written.get(step.split, 0) + n
    return written

"""One way to end on an error: the CLI and every recipe go through :func:`run_main`.

An error the project anticipates (a bad config, bad records, a finished stage made with
another config, a preflight failure, a judge or sampling server that cannot answer, an
annotator that cannot be built, a full or read-only disk, a missing file) prints one line
naming what and where, ``iterdpo: error: ...``, and exits with status 2. Anything else is
a bug or something unforeseen: its traceback is kept. ``--debug`` (anywhere on the
command line) or ``ITERDPO_DEBUG=1`` prints the traceback of anticipated errors too.

Errors inside a stage's commit carry a note naming the stage folder being written
(:func:`writing`), so a full disk reports which stage it hit even when the library that
failed (safetensors, torch) lost the file name.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

EXIT_ERROR = 2
DEBUG_ENV = "ITERDPO_DEBUG"
_NOTE = "iterdpo: while writing "
# errno values a user fixes outside the program: space, permissions, paths
_OS_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR,
              errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.EMFILE, errno.ENFILE, errno.EFBIG}
_NO_SPACE = ("No space left on device", "os error 28", "StorageFull", "Disk quota exceeded")


class UserError(Exception):
    """Mixin of every error the project anticipates: the CLI prints its message as one line, exit 2.

    ConfigError, RecordError, StageMismatch, PreflightError, JudgeError, ServerError,
    SetupError (real models and tasks) and TokenisationMismatch derive from it (besides their own base), so this module imports none of them.
    """


class PreflightError(ValueError, UserError):
    """A check before the run found something that would fail later (see :mod:`iterdpo.preflight`)."""


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Note on any exception raised inside: which stage folder was being written."""
    try:
        yield
    except Exception as e:
        if not any(n.startswith(_NOTE) for n in getattr(e, "__notes__", [])):
            e.add_note(f"{_NOTE}{path}")
        raise


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def describe(exc: BaseException) -> str | None:
    """The one-line message of an anticipated error, or None for an unexpected one."""
    notes = [n[len(_NOTE):] for e in _chain(exc) for n in getattr(e, "__notes__", []) if n.startswith(_NOTE)]
    where = f" (while writing {notes[0]})" if notes else ""
    if isinstance(exc, UserError):
        text = str(exc).strip()
        first, _, rest = text.partition("\n")
        if rest and type(exc).__name__ == "ServerError":  # a log tail follows: its file is named in the first line
            text = first
        return text + where
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _OS_ERRNOS:
            name = e.filename if e.filename is not None else notes[0] if notes else "?"
            other = f" -> {e.filename2}" if getattr(e, "filename2", None) else ""
            suffix = where if notes and str(notes[0]) not in str(name) else ""
            return f"{name}{other}: {e.strerror or os.strerror(e.errno)}{suffix}"
        if any(s in str(e) for s in _NO_SPACE):  # safetensors / torch wrap ENOSPC without the errno or the file
            return f"No space left on device{where or ' (the run directory disk is full)'}; free space and run again: finished stages are kept"
    return None


def debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """(debug?, argv without ``--debug``)."""
    on = "--debug" in argv or os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")
    return on, [a for a in argv if a != "--debug"]


def run_main(main: Callable[[list[str]], object], argv: list[str] | None = None, prog: str = "iterdpo") -> int:
    """Call ``main(argv)``; anticipated errors become one line on stderr and exit status 2.

    ``main`` returns an exit status (int) or anything else (a recipe's summary: status 0).
    ``--debug`` is taken out of ``argv`` (and sets ``ITERDPO_DEBUG=1`` for child processes).
    """
    debug, argv = debug_requested(sys.argv[1:] if argv is None else list(argv))
    if debug:
        os.environ[DEBUG_ENV] = "1"
    try:
        out = main(argv)
    except Exception as e:
        line = describe(e)
        if line is None:
            raise
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {line}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    return out if isinstance(out, int) and not isinstance(out, bool) else 0

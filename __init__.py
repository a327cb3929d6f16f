"""lineguard: visual defect inspection for factory lines."""

__version__ = "0.1.0"


class LineguardError(ValueError):
    """Input that lineguard cannot use; the message names the file or setting and what is wrong.

    The command line prints it without a traceback and exits with status 2.
    """

"""The CA's exceptions, in one place so callers can catch the family."""
from __future__ import annotations


class CAError(Exception):
    """Base class for everything the CA refuses to do."""


class CAStateError(CAError):
    """The CA's files on disk are unusable; meshd must not start with them.

    Raised for an unsafe key file mode, a key that does not match its certificate,
    an expired or non-CA root, or a half-written CA directory.
    """


class CSRError(CAError, ValueError):
    """A certificate signing request is malformed, badly signed or uses a weak key."""


class TokenError(CAError):
    """A bearer token is malformed, badly signed, expired or meant for someone else."""

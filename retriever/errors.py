"""Errors whose message is meant for a person: the CLI prints them without a traceback."""


class UnpromptError(Exception):
    """Base class: the message says what went wrong and what to do about it."""


class ProfileError(UnpromptError):
    pass


class MissingWeightsError(UnpromptError):
    pass


class ImageError(UnpromptError):
    pass


class IndexIntegrityError(UnpromptError):
    pass


class ManifestError(UnpromptError):
    pass


class HeadMismatchError(UnpromptError):
    pass


class UnpromptWarning(UserWarning):
    """Something works in a reduced way (the CLI prints it as `unprompt: warning: ...`)."""

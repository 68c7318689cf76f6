"""The errors the project anticipates: bad input or a missing prerequisite, told as one sentence that names the
problem and what would be valid. The CLI prints such an error as one line with no traceback; anything else is a
bug and keeps its traceback."""


class UserError(Exception):
    """Base class of anticipated errors: the message is the whole story for the user."""


class PresetError(UserError, ValueError):
    """A preset that cannot be found, does not parse, or holds a value its section does not accept."""

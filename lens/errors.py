"""The errors lens raises: one clear sentence naming the bad input and what would be valid."""


class LensError(ValueError):
    """Base class of lens' own errors."""


class LensInputError(LensError):
    """Bad input to a lens function (unknown agent, layer out of range, empty α grid, width mismatch, ...)."""


class LensLoadError(LensError):
    """A model, adapter or tokenizer that cannot be loaded (missing dir, wrong base, vocab mismatch, parity)."""

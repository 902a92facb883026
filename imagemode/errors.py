"""The error type every verb turns into one line for the person at the device."""


class ImagemodeError(Exception):
    """A failure with a message fit to print as the single line of an error.

    The message says what failed and, where it can, what was left untouched and what to do next.
    """

    exit_code = 1

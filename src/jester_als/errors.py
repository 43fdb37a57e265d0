"""The errors a job reports to its user as a message and exit status 1 (no stack trace unless ``-v``)."""


class JobError(Exception):
    """A failure the user can act on: bad input, an output that may not be replaced, refused compute."""

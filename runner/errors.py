"""The one exception type for bad input: its message is a single line that names the fix."""


class UserError(Exception):
    """Bad input (config, data, paths). The CLI prints `error: <message>` and exits with status 2."""

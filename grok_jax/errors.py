"""The one exception type for bad user input (a config, a path, a grid name)."""


class ConfigError(ValueError):
    """Bad input; its message is one line naming the bad value and the valid ones.

    The command line prints it without a traceback and exits with status 2.
    """

"""The one exception type for bad input: its message is a single line for the user."""


class SqloraError(Exception):
    """Bad input or an unusable environment; the message names the file, line or key."""


def exit_on_error(main):
    """Run ``main()``; turn a SqloraError into one line on stderr and exit status 2."""
    import functools
    import sys

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except SqloraError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)

    return wrapper

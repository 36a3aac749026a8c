"""The one exception type users see.

Every bad input (a missing path, a corrupt file, a typo in a command) raises `WorkbenchError`
with one line that names the problem and the fix. The CLI, the REPL and the TUI print that line
and keep the session; anything else escaping is a bug in the workbench.
"""


class WorkbenchError(Exception):
    """A user-facing error: its message is one clear line, never a traceback."""

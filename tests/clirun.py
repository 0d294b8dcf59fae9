"""Running ``interp`` in this process, as the bad-input tests do."""


class Finished:
    """What a command run in this process left: its exit code and what it printed."""

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_in_process(*args) -> Finished:
    """``interp ARGS`` through :func:`interp.cli.main` in this process (the exit code a usage
    error's ``SystemExit`` carries, too): the same code path as the command, without a new
    interpreter's start-up per bad-input case. One subprocess test per file checks the real
    process exit code."""
    import contextlib
    import io

    from interp.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return Finished(code, out.getvalue(), err.getvalue())

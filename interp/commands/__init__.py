"""Subcommands of the ``interp`` CLI: each module has ``add_parser(sub)`` and ``run(args)``.

A module's top level imports only light things (argument types, errors), so building the parser
stays fast; ``run`` imports what the command needs."""

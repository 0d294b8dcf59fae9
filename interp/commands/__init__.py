"""Subcommands of the ``interp`` CLI that outgrew ``interp.cli``."""

"""Subcommands of `ue-dpo`. Each module defines `register(subparsers)` and imports heavy libraries only in its handler."""

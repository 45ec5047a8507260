"""The ``prunekit`` commands, one module each (``prunekit/commands/NAME.py``).

Each exposes ``add_parser(subparsers)``, which adds the command's sub-parser with
``set_defaults(func=main)``, and ``main(args) -> int``, which runs it; :mod:`prunekit.cli` builds the
parser from them and calls ``args.func(args)``. Building the parser imports no torch, diffusers or
DeepSpeed: a command module imports what its command needs inside its functions.
"""

from __future__ import annotations

# In the order ``prunekit --help`` lists them.
COMMANDS = ("run", "validate", "profile", "generate", "export", "sweep", "eval", "report", "plugins")

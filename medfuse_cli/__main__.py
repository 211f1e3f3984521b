"""``python -m medfuse_cli`` runs the same CLI as the ``medfuse`` command."""

from medfuse_cli.cli.entry import main

main()

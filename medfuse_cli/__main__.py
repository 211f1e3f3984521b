"""``python -m medfuse_cli`` runs the same CLI as the ``medfuse`` command (and is what torchrun
starts: see ``run_as_module``)."""

from medfuse_cli.cli.entry import run_as_module

run_as_module()

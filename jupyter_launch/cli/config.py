"""Jupyter configuration for every ``jupyter launch`` command, loaded as any JupyterApp loads its own.

``jupyter_launch_config.py`` (or ``.json``) from Jupyter's config path (``jupyter --paths``), and ``--Class.trait=value``
words on the command line, configure the agent and its backends (``c.Agent.max_jobs``, ``c.DockerBackend.*``,
``c.KubernetesBackend.*``), and which store and blob store classes the command opens. A standalone or remote
``jupyter launch agent`` reads the same files as the server's in-process agent does through the server's config.
"""

from __future__ import annotations

import re

from jupyter_core.application import JupyterApp
from traitlets import Type
from traitlets.config import Configurable

CONFIG_WORD = re.compile(r"^--[A-Za-z_]\w*(\.[A-Za-z_]\w*)+(=.*)?$")


class LaunchCommand(JupyterApp):
    """The configuration of one ``jupyter launch`` command (the command itself is parsed by argparse)."""

    name = "jupyter-launch"
    description = "Run notebooks, cells and commands on queues."
    raise_config_file_errors = True  # a broken config file is an error naming it, never silently ignored

    store_class = Type(default_value="jupyter_launch.store.SQLStore", klass=object, config=True,
                       help="The store class an embedded command or a standalone agent opens with the store URL.")
    blob_store_class = Type(default_value="jupyter_launch.store.BlobStore", klass=object, config=True,
                            help="The blob store class opened on the launch home's blob folder.")

    def configurables(self) -> list[type[Configurable]]:
        """The classes this configuration reaches: this command, the agent, and every registered backend."""
        from ..agent import Agent

        return [LaunchCommand, *Agent.configurables()]

    def load(self, words: list[str]) -> None:
        """Read the config files, then the ``--Class.trait=value`` words (which win)."""
        self.load_config_file()
        if words:
            self.parse_command_line(words)

    def help_all(self) -> str:
        """Every configurable option of the agent and the backends, as ``--help-all`` of a Jupyter app prints them."""
        return "\n".join(cls.class_get_help() for cls in self.configurables())


def config_words(words: list[str]) -> tuple[list[str], list[str]]:
    """Split leftover command-line words into ``--Class.trait=value`` config words and the rest."""
    config = [w for w in words if CONFIG_WORD.match(w)]
    return config, [w for w in words if not CONFIG_WORD.match(w)]

"""``python -m vecmigrate`` runs the ``vecmigrate`` command."""

import sys


def run() -> None:
    """The ``vecmigrate`` program. ``serve`` starts from its own module, so that the gateway's
    process imports only what serving needs (see :mod:`vecmigrate.serving.command`)."""
    if sys.argv[1:2] == ["serve"]:
        from vecmigrate.serving.command import run as serve

        serve(sys.argv[2:])
    else:
        from vecmigrate.control.cli import run as command

        command()


if __name__ == "__main__":
    run()

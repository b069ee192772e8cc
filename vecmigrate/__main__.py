"""``python -m vecmigrate`` runs the ``vecmigrate`` command."""

from vecmigrate.control.cli import run

if __name__ == "__main__":
    run()

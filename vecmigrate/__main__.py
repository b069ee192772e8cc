"""``python -m vecmigrate`` runs the ``vecmigrate`` command."""

from vecmigrate.control.cli import main

if __name__ == "__main__":
    main()

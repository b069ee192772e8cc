"""``python -m control`` runs the ``vecmigrate`` command."""

from control.cli import main

if __name__ == "__main__":
    main()

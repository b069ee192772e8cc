"""``python -m vecmigrate`` runs the ``vecmigrate`` command."""

import sys


def run() -> None:
    """The ``vecmigrate`` program. ``serve`` starts from its own module, so that the gateway's
    process imports only what serving needs (see :mod:`vecmigrate.serving.command`). Every other
    command's flags are read before the commands' libraries load, so that ``--help`` and a
    mistyped flag are answered at once. Before any of them loads numpy or FAISS, the BLAS kernel
    is chosen (see :mod:`vecmigrate.blas`)."""
    from vecmigrate.blas import prefer_core

    prefer_core()
    if sys.argv[1:2] == ["serve"]:
        from vecmigrate.serving.command import run as serve

        serve(sys.argv[2:])
    else:
        from vecmigrate.control.arguments import parser
        from vecmigrate.telemetry.logs import run_program

        args = parser().parse_args()
        from vecmigrate.control.cli import execute

        run_program(lambda: execute(args))


if __name__ == "__main__":
    run()

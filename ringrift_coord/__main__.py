"""``python -m ringrift_coord`` — the same entry point as the ``ringrift-coord`` script."""

from ringrift_coord.cli.main import main

if __name__ == "__main__":
    main()

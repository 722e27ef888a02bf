"""``python -m ringrift_coord`` — the same entry point as the ``ringrift-coord`` script."""

from ringrift_coord.cli.main import console_main

if __name__ == "__main__":
    console_main()

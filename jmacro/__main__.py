"""``python -m jmacro``: the ``jmacro`` command line."""

from jmacro.cli import main

if __name__ == "__main__":
    main()

"""``python -m pytest_fa.lint PATH...``."""

from . import main

if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m pytest_fa.lint PATH...``."""

from pytest_fa.lint import main

if __name__ == "__main__":
    raise SystemExit(main())

"""Tools that are not tests: run as modules from the repository root (`python -m tools.reliability.X`)."""

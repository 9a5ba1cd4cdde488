"""The reliability tools behind `make reliability` and RELIABILITY.md: the crash and load suites, the
edge, work, sandbox and webhook-durability probes, and the malformed-file corpus (malformed.py, with its
mutations) that both these tools and the tests in tests/reliability/ use. Each tool is run as a module
from the repository root, e.g. `python -m tools.reliability.crash_suite --help`."""

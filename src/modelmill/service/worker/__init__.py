"""The background worker: loop.py claims and dispatches, in order, a fine-tuning job (jobs/runner.py), an
eval run (evals/runner.py) or a batch (batches/runner.py), each with a TaskContext (core/tasks.py)."""

"""Fine-tuning jobs: requests.py checks and queues a create request, methods.py is the table of training
methods, runner.py runs one claimed job (reporter.py and trackers.py record its progress),
eval_reports.py makes its before/after eval reports."""

"""The Batch API: requests.py creates, cancels and finalizes a batch, lines.py reads and prepares each
line of its input file, runner.py answers the lines on the worker."""

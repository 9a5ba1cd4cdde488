"""What every resource uses, below them all and above the store: tasks.py (the TaskContext a worker task runs
with: lease, heartbeat, fencing), auth.py (API keys, dashboard sessions), limits.py (the per-project executor
for slow work), metrics.py (Prometheus, GET /metrics), metrics_dir.py (its multiprocess mode)."""

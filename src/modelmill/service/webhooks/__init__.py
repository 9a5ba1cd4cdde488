"""Webhooks: outbox.py registers endpoints, enqueues events in the store and delivers them."""

"""Where notifications come in.

Every source of notifications becomes an ObjectEvent: webhook bodies
(notifications.py), the folder watcher (watcher.py), backfill (backfill.py).
"""

"""Runtime: where a step runs.

- :mod:`.app` the Celery application and sending a step to its queue;
- :mod:`.tasks` the (thin) Celery task;
- :mod:`.runner` ``run_step``: claim, fetch, run, record, retry or fail;
- :mod:`.sandbox` the child process with its time and memory limits.
"""

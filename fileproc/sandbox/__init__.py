"""What keeps a runner in: one module per protection, each usable on its own.

- :mod:`.landlock`: what a runner may write, read and signal (Linux Landlock);
- :mod:`.isolation`: a private mount view (its own /tmp and /dev/shm, fileproc's
  folders covered), a user of its own, a cap on processes, and the data folder's modes.

Nothing here knows a function, a job or a setting: callers pass paths and sizes.
"""

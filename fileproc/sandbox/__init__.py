"""What keeps a runner in: one module per protection, each usable on its own.

- :mod:`.landlock`: what a runner may write, read and signal (Linux Landlock);
- :mod:`.confine`: Landlock applied to a runner's own folders, and a refusal
  (or a file past its disk limit) explained in plain words;
- :mod:`.isolation`: a private mount view (its own /tmp and /dev/shm, fileproc's
  folders covered), a user of its own, a cap on processes, and the data folder's modes;
- :mod:`.limits`: resource limits (address space, file size);
- :mod:`.reaper`: the runner as its processes' subreaper, so nothing a step
  started outlives it;
- :mod:`.procfs`: memory readings from ``/proc`` (size, the peak of one step).

Nothing here knows a function, a job or a setting: callers pass paths and sizes.
It imports nothing of fileproc but its core modules.
"""

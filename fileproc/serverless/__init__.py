"""Serverless user functions: deploy a Lambda handler unchanged, run it isolated, meter what it cost.

- :mod:`.packages`: a handler's file or folder zipped into storage (so every
  host can load it), checked against its recorded sha256, unpacked and its
  requirements installed once per version on each host;
- :mod:`.credentials`: a function's own store credentials, scoped like a
  Lambda execution role (STS AssumeRole with a session policy), never
  fileproc's keys;
- :mod:`.catalog`: which version a step's ``NAME``, ``NAME:VERSION`` or
  ``NAME:ALIAS`` runs, resolved per step (cached briefly) so workers pick up
  a deploy or a rollback without a restart;
- :mod:`.lambda_runtime`: Lambda's execution environment inside a warm
  runner: ``AWS_LAMBDA_*`` and AWS variables, nothing of fileproc's
  settings, a private ``TMPDIR``, print/logging captured per invocation,
  boto3 pointed at the configured store (one module each: :mod:`.environment`,
  :mod:`.capture`, :mod:`.logformat`, :mod:`.boto3_hook`, :mod:`.errorformat`);
- :mod:`.bootstrap`: the runner itself, a fresh interpreter the worker
  execs (no descriptor, variable or object of the worker's);
- :mod:`.scaffold`: ``fileproc functions new``.

The versions themselves are rows of the state database
(:mod:`fileproc.state.deployments`).
"""

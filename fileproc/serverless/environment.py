"""The environment of a deployed function's runner: Lambda's variables, the store's, the function's own.

Built in the worker; the runner's whole environment is this (it is started
with an empty one, :mod:`.bootstrap`), plus its scoped credentials
(:mod:`.credentials`, added per runner) and what it sets itself (TMPDIR,
its log stream). Nothing of fileproc's settings or secrets is in it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fileproc.functions import log_group_name
from fileproc.functions.aws import store_variables

if TYPE_CHECKING:
    from fileproc.config import Settings
    from fileproc.state.deployments import FunctionVersion


def environment(settings: Settings, version: FunctionVersion, folder: Path) -> dict[str, str]:
    """The environment of a runner of ``version``; its credentials (:func:`.key_variables`) are added per
    runner by :meth:`.LambdaHandler.spawn`, TMPDIR and the log stream in the runner."""
    code = folder / "code"
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    found = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "LANG": "en_US.UTF-8", "TZ": ":UTC",
        "LAMBDA_TASK_ROOT": str(code), "LAMBDA_RUNTIME_DIR": sys.prefix, "_HANDLER": version.handler,
        "AWS_EXECUTION_ENV": f"AWS_Lambda_{python}",
        "AWS_LAMBDA_FUNCTION_NAME": version.function,
        "AWS_LAMBDA_FUNCTION_VERSION": str(version.version),
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(version.memory_mb),
        "AWS_LAMBDA_LOG_GROUP_NAME": log_group_name(version.function),
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "PYTHONPATH": f"{code}:{folder / 'deps'}",
        # boto3 reads no ~/.aws of the host: path-style addressing (what S3-compatible stores
        # serve) from a file of the function's own, credentials from the variables only.
        "AWS_CONFIG_FILE": str(folder / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(folder / "aws-credentials"),
        **store_variables(settings),
    }
    return {**found, **version.env}


__all__ = ["environment"]

"""``fileproc functions new NAME``: a handler written as for AWS Lambda, a sample S3 event, a test."""

from __future__ import annotations

import json
from pathlib import Path

from fileproc.errors import ConfigError
from fileproc.events import ObjectEvent

HANDLER = '''"""{name}: an S3-triggered function, written exactly as for AWS Lambda.

Deploy it:  fileproc functions deploy . --name {name} --handler lambda_function.lambda_handler
"""

import json
import logging
from urllib.parse import unquote_plus

logger = logging.getLogger()
logger.setLevel(logging.INFO)


def lambda_handler(event, context):
    keys = []
    for record in event["Records"]:
        bucket = record["s3"]["bucket"]["name"]
        key = unquote_plus(record["s3"]["object"]["key"])  # keys arrive URL-encoded, as from AWS
        logger.info("new object s3://%s/%s (%s bytes)", bucket, key, record["s3"]["object"]["size"])
        keys.append(key)
    return {{"statusCode": 200, "body": json.dumps({{"keys": keys, "request": context.aws_request_id}})}}
'''

TEST = '''"""Run with: python -m pytest"""

import json
from pathlib import Path
from types import SimpleNamespace

from lambda_function import lambda_handler


def test_the_handler_reads_the_sample_event():
    event = json.loads((Path(__file__).parent / "event.json").read_text())
    context = SimpleNamespace(aws_request_id="test-request")
    answer = lambda_handler(event, context)
    assert answer["statusCode"] == 200
    assert json.loads(answer["body"])["keys"] == ["photos/my cat.jpg"]
'''


def scaffold(folder: Path, name: str, *, force: bool = False) -> list[Path]:
    """Write the handler, ``event.json``, a test and an empty ``requirements.txt`` in ``folder``."""
    event = {"Records": [ObjectEvent("uploads", "photos/my cat.jpg", size=1024, etag="0123456789abcdef",
                                     source="sample").to_record(region="us-east-1", configuration_id=name)]}
    files = {
        "lambda_function.py": HANDLER.format(name=name),
        "event.json": json.dumps(event, indent=2) + "\n",
        "test_lambda_function.py": TEST,
        "requirements.txt": "# one requirement a line, installed for each version: fileproc functions deploy "
                            "--requirements requirements.txt\n",
    }
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, text in files.items():
        path = folder / file_name
        if path.exists() and not force:
            raise ConfigError(f"{path} exists (use --force to overwrite)")
        path.write_text(text)
        written.append(path)
    return written


__all__ = ["scaffold"]

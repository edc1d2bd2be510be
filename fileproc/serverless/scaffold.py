"""``fileproc functions new NAME``: a handler that does what its name says, a boto3 variant, a sample event, a test.

The handler works on every storage backend, the embedded default's folders
included: it reads the upload through ``context.input`` and writes through
``context.output`` (under the pipeline's output location; with ``fileproc
invoke``, under ``functions.bucket``'s ``invocations/``). The boto3 variant
is the shape AWS's own tutorial has, for an S3 store (or AWS itself).
``event.json`` names ``uploads/photos/my cat.jpg``, the object the README's
walkthrough uploads, so ``fileproc invoke NAME --event NAME/event.json``
works as soon as it is there.
"""

from __future__ import annotations

import json
from pathlib import Path

from fileproc.errors import ConfigError
from fileproc.events import ObjectEvent

SAMPLE_BUCKET, SAMPLE_KEY = "uploads", "photos/my cat.jpg"
"""The object ``event.json`` names: the one the README's Lambda walkthrough uploads."""

HANDLER = '''"""{name}: a SIZE px (environment variable, default 128) JPEG copy of each uploaded image.

Written as for AWS Lambda's S3 trigger. On fileproc, context.input is the
object that triggered the invocation and context.output writes under the
pipeline's output location, on any storage backend (the embedded default's
folders too). lambda_function_boto3.py does the same with boto3, as on AWS.

Deploy it:  fileproc functions deploy {name}/ --name {name} --handler lambda_function.lambda_handler --env SIZE=128
Try it:     fileproc invoke {name} --event {name}/event.json
"""

import io
import logging
import os
from pathlib import PurePosixPath
from urllib.parse import unquote_plus

from PIL import Image

logger = logging.getLogger()
logger.setLevel(logging.INFO)

SIZE = int(os.environ.get("SIZE", "128"))


def resized(source, size):
    """JPEG bytes of the image in ``source`` (a path or a file), at most ``size`` px on its longer side."""
    with Image.open(source) as image:
        image.thumbnail((size, size))
        out = io.BytesIO()
        image.convert("RGB").save(out, "JPEG", quality=85)
    return out.getvalue()


def lambda_handler(event, context):
    record = event["Records"][0]  # an S3 notification carries one record
    key = unquote_plus(record["s3"]["object"]["key"])  # keys arrive URL-encoded, as from AWS
    data = resized(context.input.path, SIZE)
    name = f"{{PurePosixPath(key).stem}}-{{SIZE}}.jpg"
    written = context.output.put(name, data, content_type="image/jpeg")
    logger.info("resized s3://%s/%s to %s/%s (%d bytes)", record["s3"]["bucket"]["name"], key,
                written.bucket, written.key, written.size)
    return {{"bucket": written.bucket, "key": written.key, "size": written.size}}
'''

BOTO3_HANDLER = '''"""{name} with boto3, as on AWS Lambda: for an S3 store (storage.backend = "s3") or AWS itself.

fileproc points boto3 at the configured store (AWS_ENDPOINT_URL_S3 and the
function's own credentials); on the embedded default's folders there is no
S3 endpoint, so use lambda_function.py there. The copy goes to bucket
OUTPUT_BUCKET (environment variable; default: the source bucket + "-resized"),
which the function's pipeline should name as its output bucket.

Deploy it:  fileproc functions deploy {name}/ --name {name} --handler lambda_function_boto3.lambda_handler
"""

import logging
import os
import tempfile
from pathlib import PurePosixPath
from urllib.parse import unquote_plus

import boto3

from lambda_function import SIZE, resized

logger = logging.getLogger()
logger.setLevel(logging.INFO)

s3 = boto3.client("s3")


def lambda_handler(event, context):
    record = event["Records"][0]
    bucket = record["s3"]["bucket"]["name"]
    key = unquote_plus(record["s3"]["object"]["key"])
    target = os.environ.get("OUTPUT_BUCKET") or f"{{bucket}}-resized"
    with tempfile.TemporaryDirectory() as folder:  # /tmp, as on Lambda
        source = os.path.join(folder, "source")
        s3.download_file(bucket, key, source)
        data = resized(source, SIZE)
    out_key = f"{{key}}/{{PurePosixPath(key).stem}}-{{SIZE}}.jpg"
    s3.put_object(Bucket=target, Key=out_key, Body=data, ContentType="image/jpeg")
    logger.info("resized s3://%s/%s to s3://%s/%s (%d bytes)", bucket, key, target, out_key, len(data))
    return {{"bucket": target, "key": out_key, "size": len(data)}}
'''

TEST = '''"""Run with: python -m pytest"""

import io
import json
from pathlib import Path
from types import SimpleNamespace

from PIL import Image

from lambda_function import SIZE, lambda_handler


class Output:
    """What context.output does, kept in memory."""

    def __init__(self):
        self.written = {{}}

    def put(self, name, data, content_type=None):
        self.written[name] = data
        return SimpleNamespace(bucket="out", key=name, size=len(data))


def test_the_handler_resizes_the_sample_event_s_image(tmp_path):
    event = json.loads((Path(__file__).parent / "event.json").read_text())
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (1200, 800), "teal").save(photo)
    context = SimpleNamespace(aws_request_id="test-request", input=SimpleNamespace(path=photo), output=Output())
    answer = lambda_handler(event, context)
    assert answer["key"] == f"my cat-{{SIZE}}.jpg"
    with Image.open(io.BytesIO(context.output.written[answer["key"]])) as made:
        assert max(made.size) == SIZE
'''

REQUIREMENTS = """\
# One requirement a line, installed for each version:
#   fileproc functions deploy ... --requirements {name}/requirements.txt
# Pillow and boto3 come with fileproc (every function can import them); on AWS Lambda itself, list Pillow here.
"""


def sample_event(name: str) -> dict[str, object]:
    """An S3 ``ObjectCreated:Put`` event for the README's sample upload, as its pipeline ``name`` would send it."""
    record = ObjectEvent(SAMPLE_BUCKET, SAMPLE_KEY, size=1024, etag="0123456789abcdef",
                         source="sample").to_record(region="us-east-1", configuration_id=name)
    return {"Records": [record]}


def scaffold(folder: Path, name: str, *, force: bool = False) -> list[Path]:
    """Write the handler, its boto3 variant, ``event.json``, a test and ``requirements.txt`` in ``folder``."""
    files = {
        "lambda_function.py": HANDLER.format(name=name),
        "lambda_function_boto3.py": BOTO3_HANDLER.format(name=name),
        "event.json": json.dumps(sample_event(name), indent=2) + "\n",
        "test_lambda_function.py": TEST.format(),
        "requirements.txt": REQUIREMENTS.format(name=name),
    }
    existing = [folder / file_name for file_name in files if (folder / file_name).exists()]
    if existing and not force:  # checked before anything is written: no half-made folder
        raise ConfigError(f"{existing[0]} exists (use --force to overwrite)")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, text in files.items():
        path = folder / file_name
        path.write_text(text)
        written.append(path)
    return written


__all__ = ["SAMPLE_BUCKET", "SAMPLE_KEY", "sample_event", "scaffold"]

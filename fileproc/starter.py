"""The commented starter config ``fileproc init`` writes, in TOML or YAML.

Its pipeline is the no-config demo's (:data:`fileproc.config.DEMO_PIPELINE`),
so a user who starts from it gets what the demo showed; a test holds both
texts to that.
"""

from __future__ import annotations

from pathlib import Path

YAML_SUFFIXES = (".yaml", ".yml")

STARTER_TOML = """\
# fileproc configuration. Every setting can also be set from the environment:
# [section] name -> FILEPROC_SECTION_NAME (e.g. FILEPROC_STORAGE_ENDPOINT).

# Where the embedded default keeps buckets, state and the broker's data.
data_dir = "fileproc-data"
log_level = "INFO"

[storage]
backend = "local"            # "local" (folders under data_dir/buckets) or "s3"
# endpoint = "127.0.0.1:7070"  # S3-compatible endpoint (host:port)
# access_key = "..."
# secret_key = "..."
# secure = true              # https
# region = ""

[broker]
# url = "redis://127.0.0.1:6379/0"   # empty: the embedded broker of `fileproc serve`
visibility_timeout = 300     # seconds before work taken by a dead worker is handed on

[database]
# url = "postgresql+psycopg://fileproc:secret@127.0.0.1/fileproc"   # empty: SQLite in data_dir

[api]
host = "127.0.0.1"
port = 8080
# webhook_token = "..."      # POST /events needs it (MinIO auth_token); empty: generated
# admin_token = "..."        # the admin API needs it; empty: generated (data_dir/tokens.json)

[worker]
concurrency = 2
# queues = ["thumbnail"]     # empty: every function's queue

[functions]
# paths = ["./functions"]    # directories of your own function modules

[watcher]
enabled = true
settle_seconds = 1.0

# Pipelines: which objects go through which functions.
[[pipelines]]
name = "thumbnails"
match = { bucket = "uploads", suffix = [".jpg", ".jpeg", ".png", ".webp", ".gif"], events = ["s3:ObjectCreated:*"] }
# params: sizes (longest edge, px), format (jpeg, png, webp), quality (1-100, default 85)
steps = [{ function = "thumbnail", params = { sizes = [256], format = "webp" } }]
# A plain handler(event, context) needs no decorator: { handler = "mymodule:handler" }
output = { bucket = "derived", key = "thumbnails/{key}/{name}" }
"""

STARTER_YAML = """\
# fileproc configuration. Every setting can also be set from the environment:
# section: name -> FILEPROC_SECTION_NAME (e.g. FILEPROC_STORAGE_ENDPOINT).

# Where the embedded default keeps buckets, state and the broker's data.
data_dir: fileproc-data
log_level: INFO

storage:
  backend: local             # "local" (folders under data_dir/buckets) or "s3"
  # endpoint: 127.0.0.1:7070   # S3-compatible endpoint (host:port)
  # access_key: "..."
  # secret_key: "..."
  # secure: true             # https
  # region: ""

broker:
  # url: redis://127.0.0.1:6379/0   # empty: the embedded broker of `fileproc serve`
  visibility_timeout: 300    # seconds before work taken by a dead worker is handed on

database: {}
  # url: postgresql+psycopg://fileproc:secret@127.0.0.1/fileproc   # empty: SQLite in data_dir

api:
  host: 127.0.0.1
  port: 8080
  # webhook_token: "..."     # POST /events needs it (MinIO auth_token); empty: generated
  # admin_token: "..."       # the admin API needs it; empty: generated (data_dir/tokens.json)

worker:
  concurrency: 2
  # queues: [thumbnail]      # empty: every function's queue

functions: {}
  # paths: [./functions]     # directories of your own function modules

watcher:
  enabled: true
  settle_seconds: 1.0

# Pipelines: which objects go through which functions.
pipelines:
  - name: thumbnails
    match:
      bucket: uploads
      suffix: [.jpg, .jpeg, .png, .webp, .gif]
      events: ["s3:ObjectCreated:*"]
    steps:
      # params: sizes (longest edge, px), format (jpeg, png, webp), quality (1-100, default 85)
      - function: thumbnail
        params: {sizes: [256], format: webp}
      # A plain handler(event, context) needs no decorator: - handler: mymodule:handler
    output:
      bucket: derived
      key: "thumbnails/{key}/{name}"
"""


def starter_config(path: Path) -> str:
    """The starter text for ``path``: YAML for ``.yaml``/``.yml``, TOML otherwise."""
    return STARTER_YAML if path.suffix.lower() in YAML_SUFFIXES else STARTER_TOML

"""Outputs that follow their source (``on_delete = "remove-outputs"``).

When the source object is deleted, its removal job takes away what the
pipeline made from it; when a new version has been processed, what earlier
runs made that this run did not make again goes too. Only fileproc's own
output is removed: an output key holding something else by now (its etag is
none the pipeline recorded there) is left, and so said. Every removal is
recorded on the output (``removed_at``, ``removed_by``) and so on the job.

Safe to repeat (a job that dies halfway runs again): an output already gone
is only marked.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from fileproc.errors import ObjectNotFound
from fileproc.service import Service
from fileproc.state import Job, Output

log = logging.getLogger(__name__)


@dataclass
class Cleanup:
    """What one job removed, and what it left because something else wrote there since."""

    removed: list[str] = field(default_factory=list)  # bucket/key
    left: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, list[str]]:
        return {"removed": self.removed, "left": self.left}


def remove_earlier_outputs(service: Service, job: Job, *, keep: Iterable[tuple[str, str]] = ()) -> Cleanup:
    """Remove what earlier jobs of ``job``'s pipeline made from its object, except ``keep`` (bucket, key)."""
    kept = set(keep)
    records: dict[tuple[str, str], list[tuple[int, Output]]] = defaultdict(list)
    for output_id, output in service.db.earlier_outputs(job):
        if (output.bucket, output.key) not in kept:
            records[(output.bucket, output.key)].append((output_id, output))
    done = Cleanup()
    gone: list[int] = []
    for (bucket, key), found in records.items():
        try:
            now = service.storage.head(bucket, key).etag
        except ObjectNotFound:
            now = None
        if now is not None and now not in {output.etag for _, output in found}:
            done.left.append(f"{bucket}/{key}")  # another writer's object now: not ours to remove
            continue
        if now is not None:
            service.storage.delete(bucket, key)
        gone.extend(output_id for output_id, _ in found)
        done.removed.append(f"{bucket}/{key}")
    service.db.mark_removed(gone, job.id)
    if done.removed or done.left:
        log.info("job %s (%s) %s/%s: removed %d earlier output(s)%s", job.id, job.pipeline, job.bucket, job.key,
                 len(done.removed), f", left {len(done.left)} written over since" if done.left else "")
    return done

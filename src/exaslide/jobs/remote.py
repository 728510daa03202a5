"""An output folder in an object store (``--out s3://bucket/run``, ``az://``, ``gs://``).

The job engine writes a slide's files locally first (under a staging folder beside the
disk cache, ``<cache>-staging/<hash of the URL>/.partial/<slide_id>/``: see
:func:`staging_folder`), then
:meth:`RemoteOutput.commit` uploads them (whole, or in multipart parts for large files:
the fsspec implementation decides) and writes the slide's status object last, so a reader
that finds ``status/<slide_id>.json`` saying ``done`` finds every output it lists.

The status of a remote slide records, for each output, its size, its SHA-256 (of the
bytes uploaded) and the store's ETag after the upload. A rerun lists the folder once and
redoes a slide whose outputs are missing, of another size or with another ETag (an object
overwritten or corrupted in the bucket); readers can check the SHA-256.

Workers that share no file system with the driver (a Dask cluster whose machines share
only the bucket) upload what they wrote to ``<url>/.partial/<slide_id>/`` and the driver
fetches it before it commits the slide (see :class:`PartialTarget`).

One run at a time per folder: :class:`~exaslide.jobs.lease.ObjectLease`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from exaslide.jobs.stage import JobError, check_output_name
from exaslide.jobs.status import STATUS_DIR, to_jsonable
from exaslide.storage.info import etag_of

logger = logging.getLogger(__name__)

PARTIAL_DIR = ".partial"


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


#: the variable that sets where runs into object stores stage their files
STAGING_ENV = "EXASLIDE_STAGING_DIR"


def staging_folder(url: str) -> Path:
    """The local folder where a run into ``url`` stages its files before the upload:
    ``$EXASLIDE_STAGING_DIR/<hash of the URL>``, by default beside the disk cache
    (``~/.cache/exaslide-staging/...``; the cache folder itself holds only the cache's
    files), on the same disk."""
    from exaslide.storage import cache_key, default_cache_dir

    name = hashlib.sha256(cache_key(url).encode()).hexdigest()[:16]
    if os.environ.get(STAGING_ENV):
        return Path(os.environ[STAGING_ENV]).expanduser() / name
    cache = default_cache_dir()
    return cache.with_name(f"{cache.name}-staging") / name


@dataclass(frozen=True)
class PartialTarget:
    """Where a task writes a slide's files: picklable, sent with each Dask task.

    ``root`` is the driver's local partial folder. A worker that sees the driver's marker
    file there (``.driver-<token>``) shares its file system and writes there directly;
    any other worker writes into a temporary folder of its own and uploads the files to
    ``url/.partial/<slide_id>/`` (``url`` is None for a local output folder, whose
    workers always share the driver's file system).
    """

    root: str
    url: str | None = None
    token: str = ""

    def shared(self) -> bool:
        """True when this process sees the driver's partial folder."""
        return self.url is None or (Path(self.root) / f".driver-{self.token}").exists()

    def folder(self, slide_id: str) -> Path:
        return Path(self.root) / slide_id

    @contextlib.contextmanager
    def writing(self, slide_id: str):
        """Yield ``(folder, uploaded)``: the folder to write the slide's files in and a
        list that, when the folder is not the driver's, is filled with the names of the
        files uploaded to the store at the end of the block."""
        if self.shared():
            yield self.folder(slide_id), []
            return
        from exaslide.storage.urls import filesystem

        uploaded: list[str] = []
        scratch = Path(tempfile.mkdtemp(prefix="exaslide-task-"))
        try:
            folder = scratch / slide_id
            folder.mkdir()
            yield folder, uploaded
            fs, root = filesystem(self.url)
            files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                           if p.is_file())
            remote = f"{root.rstrip('/')}/{PARTIAL_DIR}/{slide_id}"
            _upload(fs, [str(folder / f) for f in files], [f"{remote}/{f}" for f in files],
                    self.url)
            uploaded += files
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def local_path(self, slide_id: str, path: str | os.PathLike, folder: Path) -> str:
        """The driver's path of a file a task wrote at ``path`` in ``folder``."""
        return str(self.folder(slide_id) / Path(path).relative_to(folder))


def _upload(fs, sources: list[str], targets: list[str], url: str) -> None:
    """Upload local files (concurrently where the store's client is asynchronous)."""
    from exaslide.storage.errors import storage_error

    if not sources:
        return
    try:
        fs.put(sources, targets)
    except Exception as exc:
        raise storage_error(exc, url, "upload") from exc


class RemoteOutput:
    """An output folder at an fsspec URL, as the job engine uses it (see the module doc).

    Raises:
        StorageError: the URL's protocol package is missing (``pip install
            'exaslide[cloud]'``) or the store cannot be reached.
    """

    remote = True

    def __init__(self, url: str):
        from exaslide.storage.errors import redact_url
        from exaslide.storage.urls import filesystem

        self.url = url.rstrip("/")
        self.name = redact_url(self.url)
        self.fs, root = filesystem(self.url)
        self.root = root.rstrip("/")
        self.out = staging_folder(self.url)  # what stages see as ``ctx.out``
        self.partial_root = self.out / PARTIAL_DIR
        self._statuses: dict[str, dict] | None = None
        self._listing: dict[str, dict] = {}
        self._lease = None
        self.token = ""

    def __str__(self) -> str:
        return self.name

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def _error(self, exc: BaseException, action: str, name: str = ""):
        from exaslide.storage.errors import storage_error

        return storage_error(exc, f"{self.url}/{name}" if name else self.url, action)

    # -- the run -----------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, rank: int | None):
        """Hold the folder's lease; set up (and afterwards remove) the local staging."""
        from exaslide.errors import StorageError
        from exaslide.jobs.lease import ObjectLease

        bucket = self.root.split("/", 1)[0]
        try:
            self.fs.info(bucket)  # the bucket: a clear error when it is absent
        except FileNotFoundError as exc:
            raise StorageError(f"{self.name}: the bucket (or container) {bucket!r} does not "
                               "exist; create it first") from exc
        except Exception as exc:
            raise self._error(exc, "write the output folder") from exc
        try:
            lease = ObjectLease(self.fs, self.root, self.name, rank)
            lease.__enter__()
        except JobError:
            raise
        except Exception as exc:
            raise self._error(exc, "take the output lease") from exc
        self._lease = lease
        try:
            if rank is None:  # leftovers of a killed run (ranks: their own slides only)
                shutil.rmtree(self.partial_root, ignore_errors=True)
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm(self._path(PARTIAL_DIR), recursive=True)
            self.partial_root.mkdir(parents=True, exist_ok=True)
            self.token = os.urandom(8).hex()
            marker = self.partial_root / f".driver-{self.token}"
            marker.touch()
            try:
                yield self
            finally:
                marker.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    self.partial_root.rmdir()
                with contextlib.suppress(OSError):
                    self.out.rmdir()
                    self.out.parent.rmdir()
        finally:
            lease.__exit__(None, None, None)

    def target(self) -> PartialTarget:
        return PartialTarget(str(self.partial_root), self.url, self.token)

    def fetch(self, slide_id: str, names: list[str]) -> None:
        """Download files a worker without the driver's file system uploaded for a slide
        into the local partial folder (and delete them from the store)."""
        if not names:
            return
        folder = self.partial_root / slide_id
        for name in names:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
        remote = self._path(f"{PARTIAL_DIR}/{slide_id}")
        try:
            self.fs.get([f"{remote}/{n}" for n in names], [str(folder / n) for n in names])
            self.fs.rm([f"{remote}/{n}" for n in names])
        except Exception as exc:
            raise self._error(exc, "fetch a worker's files", f"{PARTIAL_DIR}/{slide_id}") \
                from exc

    # -- statuses ----------------------------------------------------------------------
    def load(self) -> None:
        """List the folder and read every status object (concurrently): one pass that
        :meth:`read_status` and :meth:`is_complete` then answer from."""
        self.fs.invalidate_cache()
        try:
            found = self.fs.find(self.root, detail=True)
        except FileNotFoundError:
            found = {}
        except Exception as exc:
            raise self._error(exc, "list the output folder") from exc
        prefix = self.root + "/"
        self._listing = {p[len(prefix):]: info for p, info in found.items()
                         if p.startswith(prefix)}
        names = [n for n in self._listing if n.startswith(f"{STATUS_DIR}/") and
                 n.endswith(".json") and n.count("/") == 1 and
                 not n.split("/")[1].startswith(".")]
        self._statuses = {}
        if not names:
            return
        try:
            data = self.fs.cat([self._path(n) for n in names], on_error="return")
        except Exception as exc:
            raise self._error(exc, "read the status objects") from exc
        for name in names:
            value = data.get(self._path(name))
            if isinstance(value, BaseException):
                if isinstance(value, FileNotFoundError):
                    continue
                raise self._error(value, "read", name)
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                status = json.loads(value)
                if isinstance(status, dict):
                    self._statuses[name[len(STATUS_DIR) + 1:-5]] = status

    def status_ids(self) -> list[str]:
        if self._statuses is None:
            self.load()
        return sorted(self._statuses)

    def read_status(self, slide_id: str) -> dict | None:
        if self._statuses is None:
            self.load()
        return self._statuses.get(slide_id)

    def write_status(self, slide_id: str, status: dict) -> None:
        from exaslide.jsonio import dumps

        if self._lease is not None:
            self._lease.check()  # a run that lost the folder writes nothing more
        name = f"{STATUS_DIR}/{slide_id}.json"
        try:
            self.fs.pipe_file(self._path(name), dumps(status).encode())
        except Exception as exc:
            raise self._error(exc, "write", name) from exc
        if self._statuses is not None:
            self._statuses[slide_id] = json.loads(dumps(status))

    def write_summary(self, name: str, rows: list) -> None:
        from exaslide.jsonio import dumps

        if self._lease is not None and self._lease.lost:
            logger.warning("%s: not writing %s (the output lease was lost)", self.name, name)
            return
        try:
            self.fs.pipe_file(self._path(name), dumps(rows).encode())
        except Exception as exc:
            raise self._error(exc, "write", name) from exc

    def is_complete(self, status: dict | None, expected: dict) -> bool:
        """As :func:`~exaslide.jobs.status.is_complete`, against the listing: every
        output there with its recorded size and ETag."""
        if not status or status.get("status") != "done":
            return False
        if any(status.get(key) != value for key, value in to_jsonable(expected).items()):
            return False
        outputs, checks = status.get("outputs"), status.get("checksums") or {}
        if not isinstance(outputs, dict) or not isinstance(checks, dict):
            return False
        for name, size in outputs.items():
            info, check = self._listing.get(name), checks.get(name)
            if info is None or not isinstance(check, dict) or info.get("size") != size \
                    or etag_of(info) != check.get("etag"):
                return False
        return True

    # -- a slide's files ---------------------------------------------------------------
    def clear(self, slide_id: str, stage=None) -> None:
        """Delete what an earlier run left of a slide: the outputs its status lists and
        its staging folder (names checked as for a local folder)."""
        shutil.rmtree(self.partial_root / slide_id, ignore_errors=True)
        previous = self.read_status(slide_id) or {}
        outputs = previous.get("outputs")
        names = []
        for name in outputs if isinstance(outputs, dict) else ():
            try:
                names.append(self._path(str(check_output_name(slide_id, name))))
            except JobError as exc:
                logger.warning("%s: not deleting %r listed in its status: %s", slide_id,
                               name, exc)
        if names:
            try:
                self.fs.rm(names)
            except FileNotFoundError:
                pass
            except Exception as exc:
                raise self._error(exc, "delete the earlier outputs of", slide_id) from exc

    def commit(self, slide_id: str, expected: dict, outputs: dict[str, str], result: dict,
               started: float) -> None:
        """Upload a finished slide's files, then write its ``done`` status (last)."""
        from exaslide import __version__

        if self._lease is not None:
            self._lease.check()
        names = {name: str(check_output_name(slide_id, name)) for name in outputs}
        base = dict(expected, slide_id=slide_id, result=result,
                    outputs={name: 0 for name in outputs})
        self.write_status(slide_id, dict(base, status="committing"))
        checks = {name: {"sha256": _sha256(source)} for name, source in outputs.items()}
        order = list(outputs)  # the last declared (an index, a part's table) goes last,
        for batch in (order[:-1], order[-1:]):  # as locally, after the rest is in place
            _upload(self.fs, [outputs[n] for n in batch],
                    [self._path(names[n]) for n in batch], self.url)
        sizes = {}
        for name, source in outputs.items():
            try:
                info = self.fs.info(self._path(names[name]), refresh=True)
            except Exception as exc:
                raise self._error(exc, "check the upload of", names[name]) from exc
            local = os.path.getsize(source)
            if info.get("size") != local:
                raise JobError(f"{self.name}/{names[name]}: uploaded {info.get('size')} "
                               f"bytes of {local}")
            sizes[name] = local
            checks[name]["etag"] = etag_of(info)
            self._listing[names[name]] = info
        if self._lease is not None:
            self._lease.check()
        self.write_status(slide_id, dict(base, status="done", outputs=sizes,
                                         checksums=checks,
                                         seconds=round(time.perf_counter() - started, 3),
                                         exaslide_version=__version__))
        shutil.rmtree(self.partial_root / slide_id, ignore_errors=True)

    def tidy(self, slide_id: str) -> None:
        """Remove a skipped slide's local leftovers."""
        shutil.rmtree(self.partial_root / slide_id, ignore_errors=True)


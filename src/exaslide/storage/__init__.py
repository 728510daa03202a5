"""Local paths and fsspec URLs, with a size-limited disk cache for remote files.

>>> from exaslide.storage import open_file, local_copy
>>> with open_file("https://example.org/cohort/shard-0000.tar") as fh:  # doctest: +SKIP
...     header = fh.read(512)                   # only the blocks read are fetched
>>> local_copy("s3://bucket/cohort/manifest.csv")  # doctest: +SKIP
PosixPath('/home/me/.cache/exaslide/.../file/manifest.csv')

See ``docs/storage.md`` for the cache layout, configuration and eviction policy.
"""

from exaslide.storage.disk_cache import (
    CACHE_DIR_ENV,
    CACHE_SIZE_ENV,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_CACHE_BYTES,
    CacheEntry,
    DiskCache,
    configure_cache,
    default_cache,
    default_cache_dir,
    format_size,
    parse_size,
)
from exaslide.storage.fetch import local_copy, open_file, remote_fingerprint
from exaslide.storage.info import RemoteInfo, remote_info
from exaslide.storage.remote_file import RemoteFile, io_stats, reset_io_stats
from exaslide.storage.source import LocalSource, open_source
from exaslide.storage.urls import cache_key, is_remote, join_url, to_local, url_basename

__all__ = [
    "CACHE_DIR_ENV", "CACHE_SIZE_ENV", "DEFAULT_BLOCK_SIZE", "DEFAULT_CACHE_BYTES",
    "CacheEntry", "DiskCache", "LocalSource", "RemoteFile", "RemoteInfo", "cache_key",
    "configure_cache", "default_cache", "default_cache_dir", "format_size", "io_stats",
    "is_remote", "join_url", "local_copy", "open_file", "open_source", "parse_size",
    "remote_fingerprint", "remote_info", "reset_io_stats", "to_local", "url_basename",
]

"""One line for an object-store failure, and no secret in any line.

:func:`describe` turns what s3fs, adlfs, gcsfs or fsspec's HTTP client raise into one
line that says what went wrong and what to do: access denied (403), no such object
(404), a missing bucket or container, expired credentials, throttling. :func:`redact_url`
and :func:`scrub` remove secrets (presigned and SAS signatures, passwords in URLs, the
values of the credential variables of each cloud) from anything exaslide prints or
writes.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit, urlunsplit

from exaslide.storage.urls import cache_key

#: environment variables whose values are secrets (never printed, never written)
SECRET_VARIABLES = (
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CLIENT_SECRET", "AZURE_CLIENT_SECRET",
    "GOOGLE_OAUTH_ACCESS_TOKEN",
)

# error codes the stores send, by what they mean
_DENIED = {"accessdenied", "invalidaccesskeyid", "signaturedoesnotmatch", "authorizationfailure",
           "authenticationfailed", "authorizationpermissionmismatch", "forbidden",
           "insufficientaccountpermissions", "allaccessdisabled", "403"}
_EXPIRED = {"expiredtoken", "expiredtokenexception", "requestexpired", "tokenrefreshrequired",
            "invalidtoken"}
_NO_BUCKET = {"nosuchbucket", "containernotfound", "bucketnotfound"}
_NO_OBJECT = {"nosuchkey", "blobnotfound", "notfound", "404", "410"}
_THROTTLED = {"slowdown", "throttling", "throttlingexception", "requestlimitexceeded",
              "toomanyrequests", "serverbusy", "429", "503"}

_CODE = re.compile(r"\(([A-Za-z]+)\) when calling|<Code>([A-Za-z]+)</Code>|"
                   r"ErrorCode:?\s*([A-Za-z]+)|(?:status|HTTP|code)[ :=]{1,3}(4\d\d|5\d\d)\b",
                   re.I)


def redact_url(url: str) -> str:
    """``url`` without the secrets it may carry: a presigned URL's or a SAS token's
    signature parameters (see :func:`~exaslide.storage.urls.cache_key`) and a password
    in its user-info part."""
    text = cache_key(str(url))
    parts = urlsplit(text)
    if parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        text = urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
    return text


_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
_SECRET_FIELDS = re.compile(r"(AccountKey|SharedAccessSignature|sig|Signature|"
                            r"X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|"
                            r"X-Goog-Signature|X-Goog-Credential)=([^;&\s'\"]+)", re.I)


def scrub(text: str) -> str:
    """``text`` with every secret removed: signed URLs redacted, ``AccountKey=...`` /
    ``sig=...`` values masked, and the value of each credential variable set in this
    process's environment (``AWS_SECRET_ACCESS_KEY``, ``AZURE_STORAGE_KEY``...)
    replaced by ``***``."""
    text = _URL.sub(lambda m: redact_url(m.group(0)), str(text))
    text = _SECRET_FIELDS.sub(lambda m: f"{m.group(1)}=***", text)
    for name in SECRET_VARIABLES:
        value = os.environ.get(name)
        if value and len(value) >= 6:
            text = text.replace(value, "***")
    return text


class ScrubFilter:
    """A logging filter that passes every record through :func:`scrub` (installed on the
    command line's log handlers, so no log line carries a secret)."""

    def filter(self, record) -> bool:
        message = record.getMessage()
        cleaned = scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


def _codes(exc: BaseException) -> set[str]:
    """The error codes and HTTP statuses in an exception and its causes."""
    codes: set[str] = set()
    seen = 0
    while exc is not None and seen < 8:
        seen += 1
        response = getattr(exc, "response", None)
        if isinstance(response, dict):  # botocore ClientError
            error = response.get("Error") or {}
            codes.add(str(error.get("Code", "")).lower())
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if status:
                codes.add(str(status))
        for attr in ("error_code", "status", "status_code"):
            value = getattr(exc, attr, None)
            if isinstance(value, int | str) and value:
                codes.add(str(value).lower().split(".")[-1])
        for match in _CODE.finditer(str(exc)):
            codes.add(next(g for g in match.groups() if g).lower())
        if isinstance(exc, PermissionError):
            codes.add("403")
        elif isinstance(exc, FileNotFoundError):
            codes.add("404")
        exc = exc.__cause__ or exc.__context__
    return codes


def describe(exc: BaseException, url: str, action: str = "") -> str:
    """One line naming ``url`` (redacted) and what went wrong, e.g. ``s3://b/x.tif:
    access denied (403): check the credentials and the bucket's policy``."""
    where = redact_url(url)
    doing = f"cannot {action}: " if action else ""
    codes = _codes(exc)
    if codes & _EXPIRED:
        why = "the credentials have expired; renew them (e.g. aws sso login) and rerun"
    elif codes & _DENIED:
        why = ("access denied (403): check the credentials (environment, profile or "
               "managed identity) and the bucket's permissions")
    elif codes & _NO_BUCKET:
        why = "the bucket (or container) does not exist"
    elif codes & _THROTTLED:
        why = ("the store kept throttling the requests (503/429) after the retries; "
               "rerun later or with fewer workers (a rerun resumes)")
    elif codes & {"400", "badrequest"}:  # a HEAD's error has no body, hence no code
        why = ("the store refused the request (400 Bad Request): expired or malformed "
               "credentials, or the wrong region or endpoint; renew the credentials and "
               "check the region and endpoint settings")
    elif codes & _NO_OBJECT:
        why = "no such object (404)"
    else:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        why = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return scrub(f"{where}: {doing}{why}")


def storage_error(exc: BaseException, url: str, action: str = ""):
    """A :class:`~exaslide.errors.StorageError` whose message is :func:`describe`'s line
    (raise it ``from exc``)."""
    from exaslide.errors import StorageError

    if isinstance(exc, StorageError):
        return exc
    return StorageError(describe(exc, url, action))

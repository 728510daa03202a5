"""One line per object-store failure, and no secret in any line."""

from __future__ import annotations

import logging

import pytest
from botocore.exceptions import ClientError

from exaslide.storage.errors import ScrubFilter, describe, redact_url, scrub


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


@pytest.mark.parametrize(("error", "says"), [
    (client_error("AccessDenied", 403), "access denied (403)"),
    (client_error("InvalidAccessKeyId", 403), "access denied (403)"),
    (client_error("ExpiredToken", 400), "the credentials have expired"),
    (client_error("NoSuchBucket", 404), "the bucket (or container) does not exist"),
    (client_error("NoSuchKey", 404), "no such object (404)"),
    (client_error("SlowDown", 503), "throttling"),
    (client_error("400", 400), "expired or malformed credentials"),
    (PermissionError("Forbidden"), "access denied (403)"),
    (FileNotFoundError("x"), "no such object (404)"),
    (ValueError("odd\nsecond line"), "ValueError: odd"),
])
def test_each_failure_is_named(error, says):
    wrapped = OSError("wrapper")
    wrapped.__cause__ = error
    for exc in (error, wrapped) if not isinstance(error, ValueError) else (error,):
        line = describe(exc, "s3://b/slide.tif", "read")
        assert line.startswith("s3://b/slide.tif: cannot read: ")
        assert says in line and "\n" not in line


def test_a_number_in_a_path_is_not_a_status():
    line = describe(ValueError("bad header in slide-404.tif"), "s3://b/slide-404.tif")
    assert "no such object" not in line


def test_signatures_passwords_and_credential_values_are_removed(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzEXAMPLE")
    signed = ("https://b.s3.amazonaws.com/x.svs?X-Amz-Algorithm=AWS4-HMAC-SHA256&"
              "X-Amz-Credential=AKIA%2F20261205&X-Amz-Signature=deadbeef&part=2")
    assert redact_url(signed) == "https://b.s3.amazonaws.com/x.svs?part=2"
    sas = "https://acct.blob.core.windows.net/c/x.svs?sv=2022-11-02&se=2026&sp=r&sig=abc%3D"
    assert redact_url(sas) == "https://acct.blob.core.windows.net/c/x.svs"
    assert redact_url("https://user:pw@host/x") == "https://user:***@host/x"
    text = scrub(f"failed {signed} with key wJalrXUtnFEMI/K7MDENG+bPxRfiCYzEXAMPLE and "
                 "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=c2VjcmV0;")
    for secret in ("deadbeef", "AKIA", "wJalrXUtnFEMI", "c2VjcmV0"):
        assert secret not in text


def test_log_records_are_scrubbed(monkeypatch, caplog):
    monkeypatch.setenv("AWS_SESSION_TOKEN", "FwoGZXIvYXdzEXAMPLETOKEN")
    logger = logging.getLogger("exaslide.test.scrub")
    handler = logging.StreamHandler()
    handler.addFilter(ScrubFilter())
    record = logger.makeRecord(logger.name, logging.WARNING, __file__, 1,
                               "token %s in %s", ("FwoGZXIvYXdzEXAMPLETOKEN",
                                                  "https://h/x?sig=abc&sv=1"), None)
    assert handler.filter(record)
    assert "EXAMPLETOKEN" not in record.getMessage() and "sig=abc" not in record.getMessage()

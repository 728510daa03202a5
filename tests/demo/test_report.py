"""The demo report's formatting: timings in seconds and minutes, not four decimals."""

from __future__ import annotations

import pytest

from exaslide.demo.report import format_seconds, write_report


@pytest.mark.parametrize(("seconds", "text"), [
    (0.04, "0.0 s"), (0.44, "0.4 s"), (12.3456, "12.3 s"), (59.94, "59.9 s"),
    (59.96, "1 min 00 s"), (65.2, "1 min 05 s"), (754.6, "12 min 35 s"),
    (3599.6, "1 h 00 min"), (3725, "1 h 02 min"), (90000, "25 h 00 min"),
])
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text


def test_report_prints_timings_readably(tmp_path):
    metrics = {"training": {"history": [{"epoch": 1, "train_loss": 0.5, "val_auc": 0.9}],
                            "best_val_auc": 0.9, "best_epoch": 1},
               "patch_auc": 0.98765, "seconds": {"extract": 12.3456, "train": 65.2}}
    page = write_report(tmp_path, metrics, figure=tmp_path / "none.png",
                        test_slides=[]).read_text()
    assert "<td>12.3 s</td>" in page and "<td>1 min 05 s</td>" in page
    assert "12.3000" not in page and "0.9877" in page  # metrics keep four decimals

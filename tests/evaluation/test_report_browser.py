"""The report in a real browser: headless Chromium renders every section, with no console
error and no network request, and the page is not blank. Skipped without Chromium
(Debian: ``apt-get install chromium``)."""

from __future__ import annotations

import numpy as np
import pytest
from _chromium import check_page, find_chromium
from PIL import Image

from cnnlab.evaluation.report import SECTION_IDS

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed")


def test_report_renders_in_chromium(tiny_run, tmp_path):
    shot = tmp_path / "report.png"
    page = check_page(tiny_run / "report.html", SECTION_IDS, screenshot=shot)
    assert page.errors == []
    assert page.network_requests == []
    assert all(page.sections[s] > 40 for s in SECTION_IDS), page.sections
    assert page.images["total"] >= 8 and page.images["broken"] == 0
    with Image.open(shot) as im:
        gray = np.asarray(im.convert("L"), np.float32)
    assert gray.shape[1] == 1280 and gray.shape[0] >= 2000
    assert gray.std() > 20 and (gray < 128).mean() > 0.01  # text and plots, not a blank page

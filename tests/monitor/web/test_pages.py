"""The dashboard's pages load their own scripts and stylesheets (a page whose JavaScript is not
served shows nothing but its shell)."""

from __future__ import annotations

import re
from typing import Any

import pytest

#: Every page the monitor serves (docs/dashboard.md).
PAGES = ["/", "/jobs", "/jobs/some-job", "/stats", "/client"]


@pytest.mark.parametrize("page", PAGES)
def test_every_script_and_stylesheet_a_page_names_is_served(client: Any, page: str):
    # Given a page of the dashboard
    html = client.get(page).get_data(as_text=True)
    assets = re.findall(r'<(?:script|link)[^>]+(?:src|href)="(/[^"]+\.(?:js|css))"', html)
    # Then it names its assets, and each one answers 200 with content
    assert assets, f"{page} names no script or stylesheet"
    for asset in assets:
        answer = client.get(asset)
        assert answer.status_code == 200, f"{page}: {asset} answered {answer.status_code}"
        assert answer.data, f"{page}: {asset} is empty"
        answer.close()

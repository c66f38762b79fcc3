"""Following the `Link` header of a paged list, as a client would."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi.testclient import TestClient


def every_page(client: TestClient, url: str) -> list[Any]:
    """The JSON body of each page, from `url` through every `next` link."""
    bodies = []
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.text
        bodies.append(response.json())
        url = httpx.Response(200, headers=response.headers).links.get("next", {}).get("url")
    return bodies

"""Reading a report page the way a browser would fetch its parts."""

from __future__ import annotations

from html.parser import HTMLParser

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Tags that make a browser fetch or run something.
FETCHING_TAGS = {"script", "link", "iframe", "object", "embed", "video", "audio", "source"}


class References(HTMLParser):
    """Every URL-bearing attribute of a page, its image sources, and the tags it uses."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.images: list[str] = []
        self.urls: list[str] = []
        self.tags: set[str] = set()
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        for name, value in attrs:
            if name in {"src", "href", "srcset", "action", "data", "poster"} and value:
                self.urls.append(value)
                if tag == "img" and name == "src":
                    self.images.append(value)


def assert_self_contained(page: str) -> References:
    """No network needed: every image inlined, nothing else referenced."""
    references = References(page)
    assert references.images, "the page has no images"
    assert references.urls == references.images
    assert all(src.startswith("data:image/png;base64,") for src in references.images)
    assert "http://" not in page and "https://" not in page
    assert "@import" not in page and "url(" not in page
    assert not references.tags & FETCHING_TAGS
    return references

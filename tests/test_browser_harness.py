"""The headless-Chromium harness (tests/browser.py) must be able to fail: each page here breaks one rule.

No skip when chromium is missing: CI installs it, and inspect_page then fails saying how to fix that.
"""
from __future__ import annotations

import socket

import browser
import pytest
from browser import inspect_page

PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9Q"
       "DwADhgGAWjR9awAAAABJRU5ErkJggg==")  # 1x1 pixel


def page(tmp_path, body: str):
    path = tmp_path / "page.html"
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>t</title></head><body>{body}</body></html>")
    return path


def test_clean_page_passes(tmp_path):
    facts = inspect_page(page(tmp_path, "<h1>Study</h1><section id='summary'><p>Student beats baseline.</p></section>"
                                        f"<img src='{PNG}' width='40'><p style='max-width:600px'>narrow text</p>"))
    assert facts["requests"] == []
    assert facts["broken_images"] == [] and len(facts["images"]) == 1 and facts["images"][0]["natural_width"] == 1
    assert facts["too_wide"] == []
    assert facts["element_tops"]["summary"]["top"] < 800
    assert "Student beats baseline." in facts["element_tops"]["summary"]["text"]
    assert "Student beats baseline." in facts["first_screen_text"]
    assert facts["console_errors"] == []


def test_network_requests_and_broken_image_are_reported(tmp_path):
    facts = inspect_page(page(tmp_path, "<script src='https://cdn.example.invalid/require.js'></script>"
                                        "<img src='https://example.invalid/x.png'><p>offline?</p>"))
    assert "https://cdn.example.invalid/require.js" in facts["requests"]
    assert "https://example.invalid/x.png" in facts["requests"]
    assert [i["src"] for i in facts["broken_images"]] == ["https://example.invalid/x.png"]


def test_wide_table_is_reported(tmp_path):
    rows = "".join(f"<td>{i}</td>" for i in range(20))
    facts = inspect_page(page(tmp_path, f"<table id='wide' style='width:2000px'><tr>{rows}</tr></table>"))
    assert any(d.startswith("table#wide width=2000") for d in facts["too_wide"]), facts["too_wide"]
    assert any(d.startswith("document scrollWidth=") for d in facts["too_wide"])


def test_summary_below_first_screen(tmp_path):
    facts = inspect_page(page(tmp_path, "<h1>Top heading</h1><div style='height:1500px'></div>"
                                        "<section id='summary'>Hidden below the fold</section>"))
    assert facts["element_tops"]["summary"]["top"] >= 800
    assert "Top heading" in facts["first_screen_text"]
    assert "Hidden below the fold" not in facts["first_screen_text"]


def test_missing_chromium_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(browser.shutil, "which", lambda *a, **k: None)
    with pytest.raises(RuntimeError, match="apt-get install -y chromium"):
        inspect_page(page(tmp_path, "<p>x</p>"))


def test_hanging_request_times_out(tmp_path, monkeypatch):
    with socket.socket() as srv:  # accepts connections and never answers
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        monkeypatch.setattr(browser, "TIMEOUT_S", 3.0)
        with pytest.raises(TimeoutError, match="within 3 s"):
            inspect_page(page(tmp_path, f"<img src='http://127.0.0.1:{srv.getsockname()[1]}/slow.png'>"))

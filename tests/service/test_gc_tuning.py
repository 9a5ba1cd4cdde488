"""`modelmill serve` tunes Python's garbage collector for the server process (api/app.py tune_gc):
fewer young collections, and what exists once the app is built frozen out of full collections."""

from __future__ import annotations

import gc

from modelmill.service.api import app as app_module


def test_tune_gc_raises_the_young_threshold_and_freezes_what_exists(monkeypatch):
    before, frozen_before = gc.get_threshold(), gc.get_freeze_count()
    try:
        app_module.tune_gc()
        assert gc.get_threshold() == (app_module.GC_YOUNG_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > frozen_before
        assert gc.isenabled()
    finally:  # this test process's own collector as it was
        gc.unfreeze()
        gc.set_threshold(*before)


def test_serve_tunes_the_gc_before_serving(monkeypatch, settings):
    import logging

    import uvicorn

    order = []
    monkeypatch.setattr(logging, "basicConfig", lambda **k: None)  # serve() configures the process's logging
    monkeypatch.setattr(app_module, "create_app", lambda *a, **k: order.append("app") or object())
    monkeypatch.setattr(app_module, "tune_gc", lambda: order.append("gc"))
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: order.append("serve"))
    app_module.serve(settings)
    assert order == ["app", "gc", "serve"]

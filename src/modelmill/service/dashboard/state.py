"""The dashboard's per-app objects (created on first use, like the app's sampler)."""

from __future__ import annotations

import threading

from fastapi import Request

from modelmill.service.dashboard.file_report import FileReports, Warmer

_lock = threading.Lock()


def file_reports(request: Request) -> FileReports:
    state = request.app.state
    if getattr(state, "dashboard_reports", None) is None:
        with _lock:
            if getattr(state, "dashboard_reports", None) is None:
                state.dashboard_reports = FileReports(state.settings, state.store)
                state.dashboard_warmer = Warmer(state.dashboard_reports)
    return state.dashboard_reports


def warmer(request: Request) -> Warmer:
    file_reports(request)
    return request.app.state.dashboard_warmer

"""/docs: Swagger UI over /openapi.json, served entirely by this server.

FastAPI's default /docs page loads Swagger UI's script and stylesheet from a CDN, which breaks the
offline promise (and tells a third party who reads the docs). Swagger UI is vendored instead, like
the dashboard's uPlot: static/vendor/swagger-ui/ (Apache-2.0, see its LICENSE, NOTICE and VERSION;
`make vendor-swagger-ui` refreshes it from npm's swagger-ui-dist). ReDoc (/redoc) is off: it would
need a second vendored bundle for the same document.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

ASSETS = "/dashboard/static/vendor/swagger-ui"  # mounted by dashboard.install


def install(app: FastAPI) -> None:
    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        # validatorUrl None: Swagger UI would otherwise send the document to validator.swagger.io.
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API docs",
                                   swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
                                   swagger_ui_parameters={"validatorUrl": None})

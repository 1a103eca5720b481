"""The API docs (/docs: Swagger UI, /redoc: ReDoc) and the favicon, all served by lenet itself: FastAPI's
own docs pages load their scripts from a CDN and are blank without internet. The scripts and styles come
from the fastapi-offline package (the serve extra), which ships them; lenet uses only its files."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
ASSETS = "/docs-assets"  # where the docs pages' scripts and styles are served
FAVICON = "/favicon.ico"
OAUTH_REDIRECT = "/docs/oauth2-redirect"
# Swagger UI would ask validator.swagger.io about the schema: no request may leave this server
SWAGGER_PARAMETERS = {"validatorUrl": None}
# ... and the browser holds both pages to it (ReDoc's menu shows a logo from its CDN, hidden when refused).
# Inline scripts and styles: FastAPI's pages start Swagger UI inline, and ReDoc styles itself inline.
OWN_ONLY = {"Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
            "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
            "worker-src 'self' blob:; connect-src 'self'"}  # fmt: skip


def docs_assets() -> Path:
    """The folder of fastapi-offline's copies of Swagger UI and ReDoc (ModuleNotFoundError without it)."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def add_docs(app: FastAPI) -> None:
    """/docs, /redoc, their assets and the favicon. `app` must be built with docs_url=None, redoc_url=None."""
    app.mount(ASSETS, StaticFiles(directory=docs_assets()), name="docs-assets")
    schema, title = app.openapi_url or "/openapi.json", app.title

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=schema, title=f"{title}: API docs", swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css", swagger_favicon_url=FAVICON,
            oauth2_redirect_url=OAUTH_REDIRECT, swagger_ui_parameters=SWAGGER_PARAMETERS,
        )  # fmt: skip
        return own_only(page)

    @app.get(OAUTH_REDIRECT, include_in_schema=False)
    def oauth_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        page = get_redoc_html(
            openapi_url=schema, title=f"{title}: API reference", redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=FAVICON, with_google_fonts=False,
        )  # fmt: skip
        return own_only(page)

    @app.get(FAVICON, include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(STATIC / "favicon.ico", media_type="image/x-icon")


def own_only(page: HTMLResponse) -> HTMLResponse:
    """`page`, with the browser told to load nothing from another site (OWN_ONLY)."""
    page.headers.update(OWN_ONLY)
    return page

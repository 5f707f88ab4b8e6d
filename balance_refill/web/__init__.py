"""The admin web page, shipped as the `web` extra: `pip install 'balance_refill[web]'`.

    from balance_refill.web import admin_app

    app.mount("/admin/credits", admin_app(refiller, authorize=my_check))

A Starlette app with server-rendered Jinja2 templates (autoescaped), no JavaScript and no
build step. It calls only the library's public API (`refiller.admin`, `get_state`,
`sweep(dry_run=True)`, `refiller.directory`).
`balance_refill.web.serve` runs it on its own (`balance-refill serve`).
"""

from ._app import admin_app
from ._render import Authorize

__all__ = ["Authorize", "admin_app"]

"""``aevb explore``: a run's latent space in the browser (docs/EXPLORE.md).

:class:`~aevb.explorer.state.Explorer` holds the run's model and a split's encoder means and
answers the page's actions; :class:`~aevb.explorer.server.ExploreServer` serves the page (from
``static/`` in the package: no build step, nothing from the network) and the JSON endpoints with
the standard library's ``http.server``. :func:`aevb.explore` builds both.
"""

from __future__ import annotations

from .server import ExploreServer
from .state import BadRequest, Explorer, Projection

__all__ = ["BadRequest", "ExploreServer", "Explorer", "Projection"]

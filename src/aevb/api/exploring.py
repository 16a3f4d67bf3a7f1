"""``aevb explore``: the latent-space explorer's server, for a run (docs/EXPLORE.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..explorer import Explorer, ExploreServer
from ..explorer.state import DEFAULT_MAX_POINTS


def explore(
    run_dir: str | Path,
    *,
    data: Any = None,
    split: str = "test",
    data_dir: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    max_points: int = DEFAULT_MAX_POINTS,
    labels: Any = None,
    workers: int = 8,
) -> ExploreServer:
    """The latent-space explorer of a run: an HTTP server on ``host``:``port``, not yet serving.

    The page (``server.url``) maps the encoder means of a split (default: the run's test data;
    ``data``/``data_dir`` as for :func:`aevb.encode`) in 2-D and decodes, in the server with the
    run's model, wherever the cursor goes. ``port=0`` takes a free port. ``labels`` (one per
    datapoint) colour the map where the data has none; a split of more than ``max_points`` is
    thinned, evenly. At most ``workers`` requests are handled at once.

    ``server.start()`` serves from a background thread and ``server.stop()`` ends it (or use
    ``with aevb.explore(run) as server:``); ``server.serve_forever()`` blocks. The run is read
    only, its files verified against the manifest first. A host other than a loopback address
    serves other machines too: a one-line warning says so.
    """
    if not 0 <= int(port) <= 65535:
        raise ConfigError(f"--port must be from 0 to 65535 (0: a free port), got {port}")
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    explorer = Explorer(
        run_dir, data=data, split=split, data_dir=data_dir, max_points=max_points, labels=labels
    )
    try:
        server = ExploreServer(explorer, host, int(port), workers=workers)
    except (OSError, ValueError) as e:
        why = getattr(e, "strerror", None) or str(e)
        raise ConfigError(
            f"cannot listen on {host}:{port} ({why}); try another --host or --port"
        ) from None
    if not server.local_only:
        sys.stderr.write(
            f"aevb: warning: the explorer listens on {host}, not only this machine: anyone who "
            "can reach it sees the run's data (it has no password); --host 127.0.0.1 keeps it "
            "local\n"
        )
    return server


__all__ = ["explore"]

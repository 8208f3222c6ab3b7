"""A CodeFace replica without the engine (lifespan off: every route that does not generate) in a process of its
own, for measurements that the test process's own threads must not disturb:
`python tests/frontend_process.py PORT DATABASE_URL REDIS_URL '{"setting": value}'`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    import uvicorn

    from server.app import create_app
    from server.cli import resolve_model

    from conftest import server_settings

    port, database_url, redis_url, overrides = int(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    settings = server_settings(database_url, redis_url, port=port, **overrides)
    uvicorn.run(create_app(settings, resolve_model(settings)), host="127.0.0.1", port=port, loop="uvloop",
                http="httptools", log_config=None, access_log=False, lifespan="off")


if __name__ == "__main__":
    main()

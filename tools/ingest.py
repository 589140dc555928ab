"""`edge-ingest`: the central service that writes every station's results into PostgreSQL (docs/plant.md).

```
edge-ingest --dsn "host=db.plant user=ingest dbname=quality" --host broker.plant [--group ingest]
```

Runs until SIGTERM/SIGINT. Start two or more with the same ``--group`` to share the load (MQTT v5 shared
subscription). Errors at start are one line, exit 2; a database failure while running exits 1 (systemd restarts).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

from edge.core.errors import EdgeError
from edge.plant.ingest import Ingester, IngestError, ResultDatabase


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-ingest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dsn", required=True, help="PostgreSQL connection string (libpq key=value or postgresql:// URI)")
    p.add_argument("--host", default="localhost", help="MQTT broker host")
    p.add_argument("--port", type=int, default=1883, help="MQTT broker port")
    p.add_argument("--group", default="ingest", help="shared-subscription group: ingesters of one group share load")
    p.add_argument("--client-id", default="", help="MQTT client id (needed with --session-expiry)")
    p.add_argument(
        "--session-expiry", type=int, default=0, help="seconds the broker keeps our session (and queues results) "
        "while we are away; 0: a clean session each start",
    )  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.session_expiry and not args.client_id:
        print("edge-ingest: --session-expiry needs --client-id — the broker finds the session by it", file=sys.stderr)
        return 2
    try:
        db = ResultDatabase(args.dsn)
    except EdgeError as err:
        print(f"edge-ingest: {err}", file=sys.stderr)
        return 2
    ingester = Ingester(
        db, host=args.host, port=args.port, group=args.group, client_id=args.client_id,
        session_expiry_s=args.session_expiry,
    )  # fmt: skip

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        ingester.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        ingester.run()
    except IngestError as err:
        print(f"edge-ingest: {err}", file=sys.stderr)
        return 1
    finally:
        db.close()
    logging.getLogger("edge.plant.ingest").info(
        "event=ingest_stopped inserted=%d duplicates=%d rejected=%d",
        ingester.inserted, ingester.duplicates, ingester.rejected,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

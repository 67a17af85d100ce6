"""``python -m pixelbeam.testing.ee_emulator``: run the emulator until killed.

Prints ``EMULATOR_URL=http://127.0.0.1:PORT`` (flushed) once listening.
"""

from __future__ import annotations

import argparse
import signal
import sys
import warnings

from rasterio.errors import NotGeoreferencedWarning

from .catalog import Catalog
from .server import EmulatorConfig, EmulatorServer


def _parser(prog: str = "python -m pixelbeam.testing.ee_emulator") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--catalog", help="catalog JSON file (see pixelbeam.testing.ee_emulator.catalog)")
    p.add_argument("--latency-s", type=float, default=0.0, help="sleep per pixel request, s")
    p.add_argument("--max-concurrent", type=int, default=0, help="in-flight limit (0 = none)")
    p.add_argument("--max-rps", type=float, default=0.0, help="requests/s limit (0 = none)")
    for kind in ("429", "400", "500", "503", "hang", "reset", "truncate"):
        p.add_argument(f"--fault-{kind}", type=float, default=0.0,
                       help=f"probability of an injected {kind} per pixel request")
    p.add_argument("--hang-s", type=float, default=30.0, help="duration of a hang fault, s")
    p.add_argument("--retry-after-s", type=float, default=None,
                   help="Retry-After header on injected 429s, s (default: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault sequence")
    return p


def main(argv: list[str] | None = None, prog: str = "python -m pixelbeam.testing.ee_emulator") -> int:
    """Runs the emulator until killed; 2 (one line on stderr) for an address it may not bind."""
    args = _parser(prog).parse_args(argv)
    # rasterio suppresses this warning with the thread-unsafe warnings.catch_warnings,
    # so under concurrent requests it leaks spuriously (the warped pixels are correct).
    warnings.simplefilter("ignore", NotGeoreferencedWarning)
    config = EmulatorConfig(
        latency_s=args.latency_s, max_concurrent=args.max_concurrent, max_rps=args.max_rps,
        fault_429=args.fault_429, fault_400=args.fault_400, fault_500=args.fault_500, fault_503=args.fault_503,
        fault_hang=args.fault_hang, fault_reset=args.fault_reset,
        fault_truncate=args.fault_truncate, hang_s=args.hang_s,
        retry_after_s=args.retry_after_s, seed=args.seed)
    catalog = Catalog.from_file(args.catalog) if args.catalog else Catalog()
    try:
        server = EmulatorServer(catalog, config, host=args.host, port=args.port)
    except ValueError as e:  # a non-loopback --host
        print(f"{prog}: error: --host: {e}; give 127.0.0.1, ::1 or localhost", file=sys.stderr)
        return 2
    except OSError as e:  # the port is taken
        print(f"{prog}: error: --port: cannot listen on {args.host}:{args.port} ({e.strerror}); give another port "
              "or 0", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"EMULATOR_URL={server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

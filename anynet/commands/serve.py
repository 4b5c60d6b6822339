"""Draw digits in the browser and see what the network makes of them: anynet serve MODEL...

Starts a small web server (Python's standard library) and prints its address. The page has a
canvas to draw on with a mouse, finger or pen; as you draw, it shows the ten class probabilities
and the 28x28 image the network was given, after the same MNIST-style preprocessing as
`anynet predict`. A PNG or JPEG dropped on the page (or chosen) is read the same way. Several
model files form a committee (anynet.committee): the page shows the mean of the members'
probabilities, lists the members, and says what each read when they disagree.

The server binds 127.0.0.1 (this machine only) unless --host says otherwise; it has no
authentication, so another address lets anyone on that network use it. It answers only requests
whose Host header names it (localhost, 127.0.0.1, ::1, the --host address, or an --allow-host
name; any other gets 421), so a web page elsewhere cannot reach it through DNS rebinding. Each
request must arrive within --request-deadline seconds (408), and at most --max-connections
are served at once (the next gets 503). Ctrl-C stops it (exit 130; SIGTERM: 143).

API: GET /api/model (the model's description, JSON); POST /api/predict with a PNG or JPEG body
(Content-Type image/png or image/jpeg, at most 2 MiB and 8 million pixels) -> JSON
{"prediction": 7, "top": [{"class": 7, "probability": 0.98}, ...], "input": [[28 x 28 floats]]}.
Errors are JSON {"error": "..."} with a 4xx status (503 when busy).
"""

from __future__ import annotations

import argparse

from anynet.commands import _common as common
from anynet.committee import MAX_MEMBERS

HELP = "draw digits in a web page and watch the model read them (a local web server)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the docstring's lines
    parser.add_argument("models", metavar="MODEL", nargs="+",
                        help="model file written by anynet train; several (at most "
                        f"{MAX_MEMBERS}) form a committee that averages their class "
                        "probabilities")
    parser.add_argument(
        "--host", default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 = every "
        "network this machine is on)",
    )
    parser.add_argument(
        "--port", type=common.at_most(common.nonnegative_int, 65535), default=8000,
        help="TCP port (default: 8000; 0 = any free port)",
    )
    parser.add_argument(
        "--allow-host", metavar="NAME", action="append", default=[], type=allowed_host,
        help="also answer requests sent to NAME (a host name or IP address this server is "
        "reached by, e.g. through a proxy or from another machine); repeatable",
    )
    parser.add_argument(
        "--request-deadline", metavar="SECONDS", type=common.at_most(common.positive_float, 600),
        default=None, help="seconds a request (headers and body) may take to arrive "
        "(default: 30; at most 600)",
    )
    parser.add_argument(
        "--max-connections", metavar="N", type=common.at_most(common.positive_int, 1024),
        default=None,
        help="connections served at once; more are refused with 503 (default: 32; at most 1024)",
    )
    parser.add_argument("--open", action="store_true", help="open the page in a web browser")
    parser.add_argument("--quiet", action="store_true",
                        help="do not log failed requests on stderr")
    common.add_backend_option(parser)


def allowed_host(text: str) -> str:
    """An argparse type: a host name or IP address, as a Host header would name it."""
    from anynet.serve.server import host_name

    name = host_name(text)
    if name is None:
        raise argparse.ArgumentTypeError(f"expected a host name or IP address, such as "
                                         f"digits.lan or 192.168.1.20 (no scheme, no path), got "
                                         f"{text!r}")
    return name


def run(args: argparse.Namespace) -> int:
    import ipaddress
    import signal
    import sys
    import threading

    from anynet.committee import load_committee
    from anynet.errors import UserError
    from anynet.fileio import reason
    from anynet.serve import server as served
    from anynet.serve.predictor import Predictor

    committee = load_committee(args.models, backend=common.open_backend(args))
    predictor = Predictor(committee)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        try:
            server = served.Server(
                (args.host, args.port), predictor, log=not args.quiet,
                allowed_hosts=tuple(args.allow_host),
                deadline=args.request_deadline or served.DEADLINE,
                max_connections=args.max_connections or served.MAX_CONNECTIONS)
        except OSError as e:
            raise UserError(f"cannot listen on {args.host} port {args.port} ({reason(e)}); "
                            "choose another --port or --host") from None
        with server:
            what = (f"model {args.models[0]}" if len(committee) == 1 else
                    f"a committee of {len(committee)} models: {', '.join(committee.names)}")
            print(f"anynet serve: {server.url}  ({what}, {committee.backend.spec}; "
                  "Ctrl-C stops it)", flush=True)
            try:
                loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
            except ValueError:  # a host name
                loopback = False
            if not loopback:
                print(f"anynet: warning: listening on {args.host}: anyone who can reach this "
                      "machine on the network can use this server (it has no password); "
                      "names other than its addresses need --allow-host",
                      file=sys.stderr, flush=True)
            if args.open:
                import webbrowser

                webbrowser.open(server.url)
            server.serve_forever()
    except _Terminated:
        print("anynet: terminated (SIGTERM)", file=sys.stderr)
        return 143
    finally:
        predictor.close()  # removes its temporary folder
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


class _Terminated(Exception):
    """SIGTERM arrived: stop serving and clean up, as Ctrl-C does (exit 143)."""


def _on_sigterm(signum, frame):
    raise _Terminated

"""``solov2-operator``: run the operator (kopf) with its metrics and liveness endpoints."""

from __future__ import annotations

import argparse
import logging

import kopf

from . import __version__
from .handlers import OperatorConfig, register

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="solov2-operator",
        description="Run the SOLOv2Training operator: each SOLOv2Training becomes a headless Service and a "
        "gang of torchrun worker pods; its status follows them (phase, conditions, progress, results). "
        "It connects like kubectl: in-cluster service account, else the current kubeconfig context.",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace", "-n", action="append", default=[], metavar="NS",
        help="watch this namespace (repeatable; globs like 'ml-*' allowed). Default: all namespaces",
    )  # fmt: skip
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)"
    )
    parser.add_argument(
        "--metrics-port", type=int, default=8000, help="serve the operator's Prometheus metrics on this port "
        "(0 disables). Default: %(default)s",
    )  # fmt: skip
    parser.add_argument(
        "--liveness-port", type=int, default=8080,
        help="serve kopf's liveness probe at http://0.0.0.0:PORT/healthz. Default: %(default)s",
    )  # fmt: skip
    parser.add_argument(
        "--resync-seconds", type=float, default=10.0,
        help="re-check every training and read rank 0's progress this often. Default: %(default)s",
    )  # fmt: skip
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    registry = kopf.get_default_registry()
    register(
        registry,
        OperatorConfig(
            resync_seconds=args.resync_seconds, metrics_port=args.metrics_port if args.metrics_port else None
        ),
    )
    kopf.run(
        registry=registry,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=f"http://0.0.0.0:{args.liveness_port}/healthz",
        standalone=True,
    )

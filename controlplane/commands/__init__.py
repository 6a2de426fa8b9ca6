"""Command modules of the `meshd` CLI; each has `register(subparsers)`, cli.py calls them.

The operator's-view commands (`register_all`: proxy-config, proxy-status, analyze,
validate) talk to a running meshd only over its monitoring port
(http://host:15014/debug/...), to Envoy only over its admin port, and otherwise read
files: never through server internals.
"""


def register_all(sub) -> None:
    """Add the operator commands to the `meshd` subcommands."""
    from . import analyze, proxy_config, proxy_status, validate

    for module in (proxy_config, proxy_status, analyze, validate):
        module.register(sub)

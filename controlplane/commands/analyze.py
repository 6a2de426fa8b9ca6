"""`meshd analyze [<dir-or-file>...] [--meshd URL]`: istioctl analyze's checks.

Reads YAML/JSON files (directories recursively) and/or a running meshd's config store
(`--meshd http://host:15014`, its /debug/configz), runs the analyzers in
controlplane/analysis and prints Istio's messages:

    Error [IST0101] (VirtualService default/foo vs.yaml:12) Referenced host not found: "bar"

Exit codes: 0 no message at or above --failure-threshold (default Error); 79 when there
is one (istioctl's code); 2 when an input could not be read or parsed (the rest is still
analyzed and reported).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from .http import FetchError, get, read_token

EXIT_ISSUES = 79
EXIT_INPUT = 2
_LEVELS = ["Info", "Warning", "Error"]


def _level_rank(name: str) -> int:
    for i, lv in enumerate(_LEVELS):
        if lv.lower() == name.lower():
            return i
    raise argparse.ArgumentTypeError(f"level must be one of {', '.join(_LEVELS)}")


def _threshold(name: str) -> str:
    _level_rank(name)
    return name.capitalize()


def run(args: argparse.Namespace) -> int:
    from ..analysis import ANALYZERS, BY_NAME, analyze
    from ..analysis import messages as msg
    from ..analysis.analyzers.unsupported import unsupported_message
    from ..analysis.resources import LoadError, Location, Resource, files_under, from_configz, load_paths

    namespace = args.namespace or "default"
    try:
        mesh_config = mesh_config_file(args.mesh_config)
    except ValueError as e:
        print(f"Error: --mesh-config {args.mesh_config}: {e}", file=sys.stderr)
        return EXIT_INPUT
    resources, load_errors = load_paths(args.paths, namespace) if args.paths else ([], [])
    extra: list = []
    if args.meshd:
        try:
            configz = json.loads(get(args.meshd, "/debug/configz", {"content": "true"}, token=read_token(args.token)))
        except (FetchError, ValueError) as e:
            print(f"Error: {e}", file=sys.stderr)
            return EXIT_INPUT
        local = {(r.kind, r.namespace, r.name) for r in resources}
        resources += [r for r in from_configz(configz) if (r.kind, r.namespace, r.name) not in local]
        # Documents the running meshd refused are findings too (the last good version is in force).
        for rej in configz.get("rejections") or []:
            origin = rej.get("origin") or {}
            if not rej.get("object") and not rej.get("field"):
                # No object to name: the file (or document) could not be read at all: not
                # YAML, over the size limit, not a mapping. A parse error, not a schema one.
                load_errors.append(LoadError(origin.get("location", ""), origin.get("line", 0), rej.get("reason", "")))
                continue
            kind, _, rest = (rej.get("object") or "").partition(" ")
            ns, _, name = rest.rpartition("/")
            res = Resource("", kind or "document", ns, name or origin.get("display", ""), {},
                           Location(origin.get("location", ""), origin.get("line", 0), origin.get("index", 0)))
            text = f"{rej['field']}: {rej['reason']}" if rej.get("field") else rej.get("reason", "")
            extra.append(msg.new(msg.SCHEMA_VALIDATION_ERROR, res, text))
        # Objects the running meshd holds but does not serve (the files given are analyzed
        # for the same by UnsupportedKindAnalyzer).
        for u in configz.get("unsupported") or []:
            if (u.get("kind"), u.get("namespace"), u.get("name")) in local:
                continue
            origin = u.get("origin") or {}
            res = Resource(u.get("apiVersion", ""), u.get("kind", ""), u.get("namespace", ""), u.get("name", ""), {},
                           Location(origin.get("location", ""), origin.get("line", 0), origin.get("index", 0)))
            extra.append(unsupported_message(res, u.get("reason", "")))

    analyzers: Sequence[Any] = ANALYZERS
    if args.analyzer:
        unknown = [a for a in args.analyzer if a not in BY_NAME]
        if unknown:
            print(f"Error: unknown analyzer(s) {', '.join(unknown)}; see --list-analyzers", file=sys.stderr)
            return EXIT_INPUT
        analyzers = [BY_NAME[a] for a in args.analyzer]

    messages = analyze(resources, analyzers, service_workloads=True, mesh_config=mesh_config) + extra
    if not args.all_namespaces and args.namespace:
        messages = [m for m in messages if m.resource is None or m.resource.namespace in ("", args.namespace)]
    out_rank = _level_rank(args.output_threshold)
    shown = [m for m in messages if _level_rank(m.type.level) >= out_rank]

    for err in load_errors:
        print(f'Error(s) adding files: errors parsing content "{err.file}": {err.reason}', file=sys.stderr)

    # istioctl's footers: what was analyzed. Without --namespace meshd reports on every
    # namespace; a success with files names them (and meshd), as istioctl names its files.
    target = f"namespace: {args.namespace}" if args.namespace and not args.all_namespaces else "all namespaces"
    analyzed = "\n".join([str(f) for f in files_under(args.paths)] + ([args.meshd] if args.meshd else [])) \
        if args.paths else target
    if args.output in ("json", "yaml"):
        data = [m.as_dict() for m in shown]
        if args.output == "json":
            print(json.dumps(data, indent=2))
        else:
            import yaml

            print(yaml.safe_dump(data, sort_keys=False), end="")
    elif shown:
        for m in shown:
            print(m)
    elif not load_errors:
        print(f"\u2714 No validation issues found when analyzing {analyzed}.")
    else:
        files = "file" if len(load_errors) == 1 else "files"
        print(f"No validation issues found when analyzing {target} (but {len(load_errors)} {files} could not be parsed).")

    fail_rank = _level_rank(args.failure_threshold)
    if any(_level_rank(m.type.level) >= fail_rank for m in messages):
        print(f"Error: Analyzers found issues when analyzing {target}.\n"
              "See https://istio.io/latest/docs/reference/config/analysis for more information about causes and "
              "resolutions.", file=sys.stderr)
        return EXIT_ISSUES
    if load_errors:
        return EXIT_INPUT
    return 0


def mesh_config_file(path: str | None):
    """The MeshConfig of `--mesh-config`: the `mesh` key's YAML, or the whole `istio`
    ConfigMap holding it; Istio's defaults without a file. ValueError names the problem."""
    import yaml

    from ..model.meshconfig import DEFAULT, parse_mesh_config

    if not path:
        return DEFAULT
    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
        if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
            doc = yaml.safe_load(str((doc.get("data") or {}).get("mesh") or "")) or {}
    except OSError as e:
        raise ValueError(e.strerror or str(e)) from None
    except yaml.YAMLError as e:
        raise ValueError(f"not YAML: {e}") from None
    return parse_mesh_config(doc)


def _list_analyzers() -> int:
    from ..analysis import ANALYZERS

    for a in ANALYZERS:
        print(f"{a.name}: {a.description}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="check Istio configuration for problems (istioctl analyze's messages)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__)
    p.add_argument("paths", nargs="*", help="YAML/JSON files or directories (recursive)")
    p.add_argument("--meshd", help="also analyze the config of a running meshd, e.g. http://127.0.0.1:15014")
    p.add_argument("--token", help="bearer token for meshd's /debug (or @FILE); default $MESHD_TOKEN")
    p.add_argument("--namespace", "-n", help="namespace of objects without one (default: default)")
    p.add_argument("--all-namespaces", "-A", action="store_true", help="report on every namespace (the default "
                                                                          "unless --namespace is given)")
    p.add_argument("--output", "-o", choices=["log", "json", "yaml"], default="log")
    p.add_argument("--failure-threshold", type=_threshold, default="Error",
                   help="lowest level that makes the exit code non-zero (Info|Warning|Error; default Error)")
    p.add_argument("--output-threshold", type=_threshold, default="Info",
                   help="lowest level printed (default Info)")
    p.add_argument("--mesh-config", metavar="FILE",
                   help="the mesh's MeshConfig (the `mesh` key of the istio ConfigMap, or that ConfigMap): its "
                        "rootNamespace and extensionProviders (default: Istio's defaults, no providers)")
    p.add_argument("--analyzer", action="append", help="run only this analyzer (repeatable)")
    p.add_argument("--list-analyzers", action="store_true", help="list the analyzers and exit")
    p.set_defaults(func=lambda a: _list_analyzers() if a.list_analyzers else _check(a))


def _check(args: argparse.Namespace) -> int:
    if not args.paths and not args.meshd:
        print("Error: give files or directories to analyze, or --meshd URL", file=sys.stderr)
        return EXIT_INPUT
    return run(args)

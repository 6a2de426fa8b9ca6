"""`meshd validate <file-or-dir>...`: Istio resources against Istio's own CRD schemas.

The same checks `meshd serve` applies before an object enters the config store
(controlplane/config/validation): the CRD's structural schema as the API server applies
it (types, enums, unknown fields, required fields, CEL `x-kubernetes-validations` rules
such as PeerAuthentication's "portLevelMtls requires selector"), then Istio's semantic
rules for the kinds meshd serves. Kinds with a schema in the repository are checked even
if meshd does not act on them yet (ServiceEntry, Sidecar, AuthorizationPolicy); Istio kinds
without one are reported as skipped; Kubernetes kinds meshd reads (Service, Pod,
EndpointSlice, Namespace) get meshd's checks; other kinds are ignored.

One line per problem, naming file, line, object, field and reason; exit code 1 if any.
"""
from __future__ import annotations

import argparse
import sys


def validate_paths(paths: list[str], out=None, err=None) -> int:
    from ..analysis.analyzers.others import schema_kind
    from ..analysis.resources import LoadError, files_under, parse_text
    from ..config import kinds
    from ..config.validation import validate

    out = out or sys.stdout
    err = err or sys.stderr
    problems = 0
    bad_docs = 0
    files = files_under(paths)
    if not files:
        print("Error: no files to validate", file=err)
        return 1
    for f in files:
        try:
            resources = parse_text(f.read_text(), str(f), "")
        except (OSError, UnicodeDecodeError) as e:
            print(f"{f}: {e}", file=err)
            problems += 1
            continue
        except LoadError as e:
            print(f"{e.file}:{e.line}: not valid YAML: {e.reason}", file=err)
            problems += 1
            continue
        file_ok = True
        for r in resources:
            kind = schema_kind(r.group, r.kind)
            if kind is None:
                k8s = kinds.SERVED.get((r.group, r.kind))
                if k8s is not None and not k8s.istio:
                    kind = k8s
            if kind is None:
                if r.group.endswith(".istio.io"):
                    print(f"{r.location}: {r.kind} {r.full_name}: skipped (no schema for {r.kind} in meshd)",
                          file=err)
                continue
            errors = validate(dict(r.doc), kind)
            if errors:
                file_ok = False
                bad_docs += 1
                for e in errors:
                    problems += 1
                    path = tuple(int(p) if p.isdigit() else p for p in _split(e.field))
                    line = r.line_of(*path) if path else (r.location.line if r.location else 0)
                    where = f"{r.location.file}:{line}" if r.location else str(f)
                    print(f"{where}: {r.kind} {r.full_name or '<unnamed>'}: {e}", file=err)
        if file_ok:
            print(f'"{f}" is valid', file=out)
    if problems:
        print(f"Error: validation failed: {problems} problem(s) in {bad_docs} document(s)", file=err)
        return 1
    return 0


def _split(field: str) -> list[str]:
    out: list[str] = []
    for part in field.replace("]", "").split("."):
        out += [p for p in part.split("[") if p]
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="validate Istio resources against Istio's CRD schemas",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__)
    p.add_argument("paths", nargs="+", metavar="FILE_OR_DIR")
    p.add_argument("--filename", "-f", action="append", default=[], help="istioctl-style: a file to validate")
    p.set_defaults(func=lambda a: validate_paths(list(a.paths) + list(a.filename)))

"""`meshd validate [-f] <file-or-dir>...`: would `meshd serve` accept these files?

Each file goes through the gate `meshd serve` uses (sources/yamlfile.py, then
config/parse.py): the same size limits and strict YAML (duplicate keys are errors), the
same kinds skipped (a Secret that is not a TLS credential, Kubernetes kinds meshd has no
use for), the same checks: the CRD's structural schema as the API server applies it
(types, enums, unknown fields, required fields, CEL `x-kubernetes-validations` rules such
as PeerAuthentication's "portLevelMtls requires selector"), then Istio's semantic rules.
Kinds with a schema in the repository are checked even if meshd does not act on them yet
(ServiceEntry, Sidecar).

Objects of mesh config kinds meshd does not serve (other Istio kinds, the Kubernetes
Gateway API) are named with the reason: they would have no effect. For a security kind
(security.istio.io) that is an error, since the access control it describes would not be
enforced; for the others a warning.

Every problem of a document is printed at once, one line each, naming file:line, the
object, the field and the reason. Paths are files, directories (recursively: .yaml, .yml,
.json) or `-` for standard input, given as arguments or with -f/--filename (istioctl's
form, repeatable). Exit code 1 if any problem.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ..config.validation.errors import FieldError

STDIN = "-"


def validate_paths(paths: list[str], out: TextIO | None = None, err: TextIO | None = None,
                   stdin: Any = None) -> int:
    from ..analysis.resources import files_under

    out = out or sys.stdout
    err = err or sys.stderr
    names = [STDIN if p == STDIN else str(f) for p in paths for f in ([p] if p == STDIN else files_under([p]))]
    if not names:
        print("Error: no files to validate", file=err)
        return 1
    problems = bad_docs = 0
    for name in names:
        try:
            data = (stdin or sys.stdin.buffer).read() if name == STDIN else Path(name).read_bytes()
        except OSError as e:
            print(f"{name}: cannot read file: {e.strerror or e}", file=err)
            problems += 1
            continue
        lines = check_file(name, data)
        for line in lines:
            print(line.text, file=err)
        errors = [ln for ln in lines if ln.error]
        problems += len(errors)
        bad_docs += len({ln.document for ln in errors})
        if not errors:
            print(f'"{name}" is valid', file=out)
    if problems:
        print(f"Error: validation failed: {problems} problem(s) in {bad_docs} document(s)", file=err)
        return 1
    return 0


@dataclass(frozen=True)
class Line:
    """One line of the report: an error (counts) or a warning/notice (does not)."""

    text: str
    document: int  # index in the file; -1 for the whole file
    error: bool = True


def check_file(name: str, data: bytes) -> list[Line]:
    """Every problem of one file, in document order."""
    from ..analysis.analyzers.others import schema_kind
    from ..config.objects import ConfigObject, Origin, Rejection
    from ..config.parse import parse_document
    from ..config.validation import validate
    from ..sources.yamlfile import YamlError, load_located

    try:
        docs = load_located(data, with_lines=True)
    except YamlError as e:
        return [Line(e.at(name), -1)]
    report: list[Line] = []
    seen: set = set()
    for i, d in enumerate(docs):
        def say(errors: Iterable[FieldError], error: bool = True, d: Any = d, i: int = i) -> None:
            what = _display(d.data)
            report.extend(Line(f"{name}:{_line_of(d.lines, e.field, d.line)}: {what}: {e}", i, error) for e in errors)

        parsed = parse_document(d.data, Origin("file", name, i, d.line))
        if isinstance(parsed, ConfigObject):
            if parsed.key in seen:  # the store keeps the first definition (config/store.py)
                say([FieldError("metadata.name", "defined twice in the same file; the first definition is used")])
            seen.add(parsed.key)
        elif isinstance(parsed, Rejection):
            say(parsed.errors or [FieldError(parsed.field, parsed.reason)])
        elif parsed is not None:  # Unsupported: a mesh config kind meshd does not serve (no effect)
            say([FieldError("", f"{'Error' if parsed.security else 'Warning'}: {parsed.reason}")],
                error=parsed.security)
            schema = schema_kind(parsed.group, parsed.key.kind)
            if schema is not None:
                say(validate(d.data, schema))
        elif isinstance(d.data, dict) and d.data.get("kind") == "List":
            # `meshd serve` skips it too: say so rather than pass it as valid in silence.
            say([FieldError("", "skipped: meshd reads no `kind: List`; write its items as documents of their own")],
                error=False)
    return report


def _display(doc: Any) -> str:
    """The object as the file names it: `Kind ns/name`, `Kind name` (no namespace written)."""
    if not isinstance(doc, dict):
        return "document"
    md = doc.get("metadata")
    if not isinstance(md, dict):
        md = {}
    ns, name = md.get("namespace"), md.get("name")
    full = f"{ns}/{name}" if ns and name else str(name or "<unnamed>")
    return f"{doc.get('kind') or 'document'} {full}"


def _line_of(lines: dict, field: str, default: int) -> int:
    """The line of a field, else of its nearest parent that is written in the file (a
    missing required field points at the object holding it)."""
    path = tuple(int(p) if p.isdigit() else p for p in _split(field))
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return default


def _split(field: str) -> list[str]:
    out: list[str] = []
    for part in field.replace("]", "").split("."):
        out += [p for p in part.split("[") if p]
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check files as `meshd serve` would read them (Istio's CRD schemas and rules)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__)
    p.add_argument("paths", nargs="*", metavar="FILE_OR_DIR", help="files, directories or - (standard input)")
    p.add_argument("--filename", "-f", action="append", default=[], metavar="FILE_OR_DIR",
                   help="istioctl's form: a file, directory or - to validate (repeatable)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    paths = list(args.filename) + list(args.paths)
    if not paths:
        print("Error: give files or directories to validate (FILE, -f FILE, or - for standard input)",
              file=sys.stderr)
        return 1
    return validate_paths(paths)

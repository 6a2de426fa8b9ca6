"""Build hook: compile protos/ into controlplane/_gen/ with grpcio-tools.

Everything else is declared in pyproject.toml. The generated modules are never
committed (.gitignore): they are produced by every build, editable or not:

    pip install -e .     # generated into the source tree (controlplane/_gen/), used in place
    pip install .        # generated, then copied into the wheel with the other packages

Each proto `protos/<path>.proto` becomes `controlplane._gen.<path>_pb2` (messages) and
`..._pb2_grpc` (service stubs); e.g. `controlplane._gen.istio.v1.auth.ca_pb2`. protoc is
told that the files live under `controlplane/_gen/` (`-Icontrolplane/_gen=protos`), so
the generated imports name their real package. After changing a .proto, re-run the
install (or `python setup.py build_py`).
"""
from __future__ import annotations

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTOS = ROOT / "protos"
GEN_PACKAGE = "controlplane._gen"
GEN_DIR = ROOT / Path(*GEN_PACKAGE.split("."))


def compile_protos() -> list[str]:
    """Run grpc_tools.protoc over every .proto under protos/; returns the packages made."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(PROTOS.rglob("*.proto"))
    if not protos:
        return []
    GEN_DIR.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    virtual_root = GEN_PACKAGE.replace(".", "/")
    args = [
        "grpc_tools.protoc",
        f"-I{virtual_root}={PROTOS}",
        f"-I{well_known}",
        f"--python_out={ROOT}",
        f"--pyi_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        *(f"{virtual_root}/{p.relative_to(PROTOS).as_posix()}" for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {', '.join(str(p.relative_to(ROOT)) for p in protos)}")
    # Every directory of generated code is a package.
    packages = set()
    for out in GEN_DIR.rglob("*_pb2.py"):
        d = out.parent
        while True:
            (d / "__init__.py").touch(exist_ok=True)
            packages.add(".".join(d.relative_to(ROOT).parts))
            if d == GEN_DIR:
                break
            d = d.parent
    (GEN_DIR / "__init__.py").write_text(
        '"""Generated from protos/ by the package build (setup.py); never edit or commit."""\n'
    )
    print(f"compiled {len(protos)} proto file(s) into {GEN_DIR.relative_to(ROOT)}", file=sys.stderr)
    return sorted(packages)


def schemas_as_json() -> None:
    """The CRD schemas (controlplane/config/schemas/**/*.yaml) also as JSON, in
    controlplane/_gen/schemas/<path>.json: the parse gate reads one at the first object of
    its kind, and JSON is read some forty times faster than YAML (about 0.08 CPU-s of
    `meshd serve`'s start-up on a cluster with VirtualServices and DestinationRules;
    bench/README.md "Start-up"). Each copy records its YAML's sha256: a stale copy is not
    read (config/validation/schema.py). Without PyYAML at build time: no copies, the YAML is read."""
    try:
        import hashlib
        import json

        import yaml
    except ImportError:
        return
    out = GEN_DIR / "schemas"
    out.mkdir(parents=True, exist_ok=True)
    schemas = ROOT / "controlplane" / "config" / "schemas"
    for src in sorted(schemas.rglob("*.yaml")):  # Istio's, and the Gateway API's in gateway-api/
        data = src.read_bytes()
        doc = yaml.load(data.decode("utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        text = json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "crd": doc}, separators=(",", ":"))
        if json.loads(text)["crd"] == doc:  # JSON holds it exactly (no dates, no non-string keys)
            copy = out / f"{src.relative_to(schemas).as_posix()}.json"
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text(text)


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        schemas_as_json()
        generated = compile_protos()
        # The package list was computed before the code existed: add what was generated.
        known = set(self.packages or [])
        self.packages = list(self.packages or []) + [p for p in generated if p not in known]
        self.distribution.packages = self.packages
        super().run()


setup(cmdclass={"build_py": BuildPyWithProtos})

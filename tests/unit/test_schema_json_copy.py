"""The CRD schemas' JSON copies made by the package build (setup.py schemas_as_json,
read at start-up instead of the YAML: config/validation/schema.py): each says what its
YAML says, and a copy not made from the YAML as it is now is never read."""
from __future__ import annotations

import importlib.resources

import pytest
import yaml

from controlplane.config.validation import gateway_api, schema

FILES = sorted(set(schema.CRD_FILES.values()))


@pytest.mark.parametrize("filename", FILES)
def test_the_builds_json_copy_says_what_the_yaml_says(filename):
    data = importlib.resources.files("controlplane.config").joinpath("schemas", filename).read_bytes()
    copy = schema._json_copy(filename, data)
    assert copy is not None, "no JSON copy: the package build (pip install -e . / setup.py build_py) makes them"
    assert copy == yaml.load(data.decode("utf-8"), Loader=yaml.SafeLoader)


def test_a_copy_made_from_other_bytes_is_not_read():
    filename = FILES[0]
    data = importlib.resources.files("controlplane.config").joinpath("schemas", filename).read_bytes()
    assert schema._json_copy(filename, data + b"\n# edited since the build\n") is None
    assert schema._json_copy("no-such-crd.yaml", data) is None


@pytest.mark.parametrize("kind", sorted(gateway_api.CRD_FILES))
def test_the_gateway_apis_copies_too(kind):
    path = f"gateway-api/{gateway_api.CRD_FILES[kind]}"
    data = importlib.resources.files("controlplane.config").joinpath("schemas", *path.split("/")).read_bytes()
    copy = schema._json_copy(path, data)
    assert copy is not None and copy == yaml.load(data.decode("utf-8"), Loader=yaml.SafeLoader)
    assert gateway_api.crd(kind) == copy

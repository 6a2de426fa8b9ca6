"""YAML exactly as istioctl prints it: sigs.k8s.io/yaml's JSONToYAML (go-yaml v2), keys
sorted in go-yaml's "natural" order, strings that would read back as another type
double-quoted (gojson.py has the JSON side).
"""
from __future__ import annotations

import functools
import json
import re
from typing import Any

import yaml

from .goscalars import go_float_g


def _yaml_key_less(a: str, b: str) -> bool:
    """go-yaml v2's keyList.Less for two string keys."""
    ar, br = a, b
    for i in range(min(len(ar), len(br))):
        if ar[i] == br[i]:
            continue
        al, bl = ar[i].isalpha(), br[i].isalpha()
        if al and bl:
            return ar[i] < br[i]
        if al or bl:
            return bl
        an = bn = 0
        if ar[i] == "0" or br[i] == "0":
            j = i - 1
            while j >= 0 and ar[j].isdigit():
                if ar[j] != "0":
                    an = bn = 1
                    break
                j -= 1
        ai = i
        while ai < len(ar) and ar[ai].isdigit():
            an = an * 10 + int(ar[ai])
            ai += 1
        bi = i
        while bi < len(br) and br[bi].isdigit():
            bn = bn * 10 + int(br[bi])
            bi += 1
        if an != bn:
            return an < bn
        if ai != bi:
            return ai < bi
        return ar[i] < br[i]
    return len(ar) < len(br)


def _yaml_key_cmp(a: Any, b: Any) -> int:
    if not isinstance(a, str) or not isinstance(b, str):
        return (str(a) > str(b)) - (str(a) < str(b))
    if _yaml_key_less(a, b):
        return -1
    if _yaml_key_less(b, a):
        return 1
    return 0


_V2_BOOL_NULL = {
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false", "False", "FALSE",
    "on", "On", "ON", "off", "Off", "OFF", "~", "null", "Null", "NULL", "", ".inf", ".Inf", ".INF", "+.inf",
    "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF", ".nan", ".NaN", ".NAN", "<<",
}
_V2_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_V2_BASE60 = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")
_V2_TIMESTAMP = re.compile(
    r"^\d{4}-\d{1,2}-\d{1,2}(?:(?:[Tt]| )\d{1,2}:\d{1,2}:\d{1,2}(?:\.\d*)?(?:Z|[+-]\d{1,2}:\d{2})?)?$"
)
_V2_INT = re.compile(r"^[-+]?(0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)$")


def _v2_non_string(s: str) -> bool:
    """Would go-yaml v2 read this plain scalar back as something other than a string?"""
    if s in _V2_BOOL_NULL:
        return True
    plain = s.replace("_", "")
    if _V2_INT.match(plain) or _V2_FLOAT.match(plain) and plain not in (".", "-.", "+."):
        return True
    if s[:2] in ("0b", "-0") and re.match(r"^-?0b[01_]+$", s):
        return True
    return bool(_V2_BASE60.match(s) or _V2_TIMESTAMP.match(s))


class _GoYamlDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _repr_str(dumper: yaml.SafeDumper, s: str):
    if "\n" in s:
        return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|")
    if _v2_non_string(s):
        return dumper.represent_scalar("tag:yaml.org,2002:str", s, style='"')
    return dumper.represent_scalar("tag:yaml.org,2002:str", s)


def _repr_float(dumper: yaml.SafeDumper, f: float):
    text = go_float_g(f)
    text = {"+Inf": ".inf", "-Inf": "-.inf", "NaN": ".nan"}.get(text, text)
    return dumper.represent_scalar("tag:yaml.org,2002:float", text)


def _repr_dict(dumper: yaml.SafeDumper, d: dict):
    key_of = functools.cmp_to_key(_yaml_key_cmp)
    items = sorted(d.items(), key=lambda kv: key_of(kv[0]))
    return dumper.represent_mapping("tag:yaml.org,2002:map", items)


_GoYamlDumper.add_representer(str, _repr_str)
_GoYamlDumper.add_representer(float, _repr_float)
_GoYamlDumper.add_representer(dict, _repr_dict)


def _parse_json_like_go_yaml(text: str) -> Any:
    """JSON to Python values the way go-yaml reads JSON: integers stay integers."""
    return json.loads(text)


def to_yaml(json_text: str) -> str:
    """sigs.k8s.io/yaml.JSONToYAML."""
    data = _parse_json_like_go_yaml(json_text)
    return yaml.dump(data, Dumper=_GoYamlDumper, default_flow_style=False, allow_unicode=True, width=80,
                     sort_keys=False)

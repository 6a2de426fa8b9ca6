"""RequestAuthentication semantics beyond the schema, after Istio's
ValidateRequestAuthentication / validateJwtRule (pkg/config/validation).

Istio's checks: the policy's target, and per JWT rule an issuer or a jwksUri, a jwksUri
Istio can fetch (http or https, a valid URL), an inline `jwks` that parses as a JSON Web
Key Set, non-empty token locations, and `outputClaimToHeaders` header names.

meshd adds (docs/policy-validation.md):
- a rule with neither `jwks` nor `jwksUri` gets its key set from the issuer's OpenID
  discovery document (`<issuer>/.well-known/openid-configuration`), as with istiod, so its
  issuer must then be an http(s) URL: anything else could never be fetched, and every
  token of that issuer would be refused;
- a jwksUri needs a host, and its port is a number in 1..65535;
- header names Envoy would refuse (`fromHeaders[].name`, `outputPayloadToHeader`) are
  rejected here rather than NACKed by every proxy.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any
from urllib.parse import urlsplit

from .authorization import check_policy_target
from .errors import FieldError, child, index, invalid
from .istio_common import get, header_name_error

# Istio's validStrictHeaderNameRegex (outputClaimToHeaders[].header).
_STRICT_HEADER = re.compile(r"^[-A-Za-z0-9]+$")

# The members each key type needs (RFC 7518 section 6), base64url-encoded.
_KEY_MEMBERS = {"RSA": ("n", "e"), "EC": ("crv", "x", "y"), "oct": ("k",), "OKP": ("crv", "x")}


def validate_request_authentication(spec: dict, metadata: dict) -> list[FieldError]:
    errs: list[FieldError] = []
    check_policy_target(spec, errs)
    for i, rule in enumerate(get(spec, "jwtRules", [])):
        _check_jwt_rule(rule or {}, index("spec.jwtRules", i), errs)
    return errs


def _check_jwt_rule(rule: dict, path: str, errs: list[FieldError]) -> None:
    for k, audience in enumerate(get(rule, "audiences", [])):
        if audience == "":
            errs.append(FieldError(index(child(path, "audiences"), k), "Invalid value: \"\": audience must be "
                                                                        "non-empty string"))
    uri_field = "jwksUri" if get(rule, "jwksUri") is not None else "jwks_uri"
    jwks_uri = get(rule, uri_field, "")
    jwks = get(rule, "jwks", "")
    if not get(rule, "issuer") and not jwks_uri:
        errs.append(FieldError(child(path, "issuer"), "Required value: issuer or jwksUri must be non-empty string"))
    if jwks_uri:
        err = jwks_uri_error(jwks_uri)
        if err:
            errs.append(invalid(child(path, uri_field), jwks_uri, err))
    elif not jwks and get(rule, "issuer"):
        issuer = get(rule, "issuer")
        err = jwks_uri_error(issuer.rstrip("/") + "/.well-known/openid-configuration")
        if err:
            errs.append(invalid(child(path, "issuer"), issuer,
                                "with neither jwks nor jwksUri the key set is looked up in the issuer's OpenID "
                                f"discovery document, so the issuer must be an http(s) URL ({err}); set jwksUri or jwks"))
    if jwks:
        err = jwks_error(jwks)
        if err:
            errs.append(FieldError(child(path, "jwks"), f"Invalid value: jwks parse error: {err}"))

    for k, location in enumerate(get(rule, "fromHeaders", [])):
        name = get(location, "name", "")
        lpath = child(index(child(path, "fromHeaders"), k), "name")
        if not name:
            errs.append(FieldError(lpath, "Required value: location header name must be non-empty string"))
        else:
            err = header_name_error(name)
            if err:
                errs.append(invalid(lpath, name, err))
    for field_name, what in (("fromParams", "location query"), ("fromCookies", "cookie name")):
        for k, value in enumerate(get(rule, field_name, [])):
            if value == "":
                errs.append(FieldError(index(child(path, field_name), k),
                                       f"Invalid value: \"\": {what} must be non-empty string"))
    for k, pair in enumerate(get(rule, "outputClaimToHeaders", [])):
        ppath = index(child(path, "outputClaimToHeaders"), k)
        claim, header = get(pair, "claim", ""), get(pair, "header", "")
        if not claim or not header:
            errs.append(FieldError(ppath, "Required value: outputClaimToHeaders header and claim value must be "
                                          "non-empty string"))
        elif not _STRICT_HEADER.match(header):
            errs.append(invalid(child(ppath, "header"), header, f"header name {header} is not a valid header name"))
    payload_header = get(rule, "outputPayloadToHeader", "")
    if payload_header:
        err = header_name_error(payload_header)
        if err:
            errs.append(invalid(child(path, "outputPayloadToHeader"), payload_header, err))


def jwks_uri_error(uri: str) -> str | None:
    """Istio's ParseJwksURI (http or https, a parseable URL), plus a host and a valid port."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as e:
        return f"not a valid URL: {e}"
    if parts.scheme not in ("http", "https"):
        return f"URI scheme {parts.scheme!r} is not supported: must be http or https"
    if not parts.hostname:
        return "the URL has no host to fetch the key set from"
    if port == 0:
        return "port must be in 1..65535"
    if re.search(r"[\s\x00-\x1f\x7f]", uri):
        return "the URL contains whitespace or control characters"
    return None


def jwks_error(text: str) -> str | None:
    """An inline JSON Web Key Set: `{"keys": [...]}`, each key usable. Istio's parser also
    takes a lone JWK, but Envoy's JWT filter loads key sets only (a lone key would be
    refused by every proxy), so meshd asks for the set."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        return f"not JSON: {e}"
    if not isinstance(doc, dict):
        return "must be a JSON object: a JWK set {\"keys\": [...]}"
    keys = doc.get("keys")
    if not isinstance(keys, list):
        return "must be a JWK set: a JSON object with a \"keys\" array"
    if not keys:
        return "\"keys\" is empty: no key to verify tokens with"
    for i, key in enumerate(keys):
        err = _jwk_error(key)
        if err:
            return f"keys[{i}]: {err}"
    return None


def _jwk_error(key: Any) -> str | None:
    if not isinstance(key, dict):
        return "a JWK must be a JSON object"
    kty = key.get("kty")
    if not isinstance(kty, str) or not kty:
        return "\"kty\" is required"
    members = _KEY_MEMBERS.get(kty)
    if members is None:
        return f"unsupported key type \"kty\": {kty!r} (want one of {', '.join(_KEY_MEMBERS)})"
    for m in members:
        value = key.get(m)
        if not isinstance(value, str) or not value:
            return f"{kty} key needs \"{m}\""
        if m != "crv" and not _is_base64url(value):
            return f"\"{m}\" is not base64url-encoded"
    return None


def _is_base64url(value: str) -> bool:
    try:
        base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return False
    return re.fullmatch(r"[A-Za-z0-9_\-]+=*", value) is not None

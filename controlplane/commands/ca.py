"""`meshd ca`: the CA directory's life, from the operator's side.

    meshd ca rotate-root [--ca-dir DIR] [--key-type ec-p256|rsa-2048] [--trust-domain TD]
    meshd ca rotate-root --cacerts SRC [--ca-dir DIR]    # switch to (another) plug-in CA
    meshd ca status [--ca-dir DIR]                       # JSON: signer, bundle, previous

`rotate-root` acts on the directory only (ca/store.py): it archives the active signer
under previous/ and installs the new one, under the directory lock. A running `meshd
serve` on that directory notices within `--ca-poll-interval` (or at once on SIGHUP) and
rotates without a failed request: both roots trusted first, then workloads re-issued
from the new signer, then the old root dropped once nothing it signed can be alive
(see controlplane/security/authority.py). Without a running meshd, the next start
simply uses the new signer.

Also here: the `meshd serve` flags of certificate rotation (add_serve_flags).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid ratio {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"ratio must be between 0 and 1 (exclusive), got {text}")
    return value


def add_serve_flags(s: argparse.ArgumentParser) -> None:
    from ca.keys import KEY_TYPES

    from ..security.plane import DEFAULT_KEY_TYPE

    s.add_argument("--rotation-ratio", type=_ratio, default=0.5,
                   help="renew a workload certificate once this share of its lifetime has passed, with a +/-5%% "
                        "jitter, and push it over SDS (default %(default)s)")
    s.add_argument("--workload-key-type", choices=KEY_TYPES, default=DEFAULT_KEY_TYPE,
                   help="key type of workload certificates meshd generates (default %(default)s, the faster to issue; "
                        "see bench/ca_issue.py)")
    s.add_argument("--ca-mtls-port", type=int, default=0,
                   help="serve the Istio CA API (CreateCertificate) also on this port, to callers authenticating with "
                        "a client certificate from this CA (default 0: off; the secure xDS port serves it to token holders)")
    s.add_argument("--ca-poll-interval", type=float, default=1.0,
                   help="seconds between checks of the CA directory for a new signer (`meshd ca rotate-root`); "
                        "SIGHUP checks at once (default %(default)s)")


def _ca_dir(value: str | None) -> Path:
    from ..security.cadir import default_ca_dir

    return Path(value).expanduser() if value else default_ca_dir()


def _quiet() -> None:
    from ..logging import configure

    configure("warning")


def _rotate_root(args: argparse.Namespace) -> int:
    from ca import CAError
    from ca.store import CADirectory

    _quiet()
    directory = CADirectory(_ca_dir(args.ca_dir))
    try:
        old, new = directory.rotate_root(
            trust_domain=args.trust_domain, key_type=args.key_type,
            cacerts=Path(args.cacerts).expanduser() if args.cacerts else None,
        )
    except (CAError, OSError, ValueError) as e:
        print(f"meshd ca rotate-root: {e}", file=sys.stderr)
        return 2
    print(json.dumps({
        "ca_dir": str(directory.path),
        "old": old.describe(),
        "new": new.describe(),
        "trust_bundle": str(directory.trust_bundle_path()),
        "next": "a running `meshd serve` on this directory picks the new CA up within --ca-poll-interval "
                "(kill -HUP for at once): it trusts both roots, re-issues every workload certificate from the new "
                "CA, and drops the old root once no certificate it signed can still be alive",
    }, indent=1))
    return 0


def _status(args: argparse.Namespace) -> int:
    from ca import CAError
    from ca.store import CADirectory

    _quiet()
    directory = CADirectory(_ca_dir(args.ca_dir))
    try:
        state = directory.load(create=False)
    except (CAError, OSError, ValueError) as e:
        print(f"meshd ca status: {e}", file=sys.stderr)
        return 2
    previous = []
    for p in state.previous:
        until = directory.issued_until(p.signer.fingerprint)
        previous.append({**p.signer.describe(), "path": str(p.path),
                         "issued_until": until.isoformat() if until else None})
    bundle_path = directory.trust_bundle_path()
    print(json.dumps({
        "ca_dir": str(directory.path),
        "active": state.active.describe(),
        "previous": previous,
        "trust_bundle": str(bundle_path),
        "trust_bundle_roots": bundle_path.read_bytes().count(b"BEGIN CERTIFICATE") if bundle_path.exists() else 0,
    }, indent=1))
    return 0


def register(sub) -> None:
    from ca.keys import KEY_TYPES

    from .. import names

    c = sub.add_parser("ca", help="the CA directory: rotate the root, switch to a plug-in CA, show its state")
    csub = c.add_subparsers(dest="ca_command", required=True)
    r = csub.add_parser(
        "rotate-root", help="introduce a new root (or plug-in CA); a running meshd rotates to it without downtime",
        description=__doc__.split("\n\n")[2] if __doc__ else None,
    )
    r.add_argument("--ca-dir", help="the CA directory (default $MESHD_HOME/ca, else ~/.meshd/ca)")
    r.add_argument("--cacerts", help="a directory holding Istio's cacerts files (ca-cert.pem, ca-key.pem (0600), "
                                     "cert-chain.pem, root-cert.pem): switch to that plug-in CA instead of a new "
                                     "self-signed root")
    r.add_argument("--key-type", choices=KEY_TYPES, default="ec-p256", help="key type of a new self-signed root")
    r.add_argument("--trust-domain", default=names.TRUST_DOMAIN, help="O= of a new self-signed root (default %(default)s)")
    r.set_defaults(func=_rotate_root)
    st = csub.add_parser("status", help="print the CA directory's active signer, previous signers and trust bundle")
    st.add_argument("--ca-dir", help="the CA directory (default $MESHD_HOME/ca, else ~/.meshd/ca)")
    st.set_defaults(func=_status)

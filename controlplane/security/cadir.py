"""The CA directory: where meshd keeps its root and token signing key, and how it opens it.

Default: `$MESHD_HOME/ca` when MESHD_HOME is set, else `~/.meshd/ca`. Not relative to
the working directory: a CA that silently moves with `cd` would mint a second root,
and every workload trusting the first would stop trusting the new certificates.

Files (see ca/store.py for the whole layout, ca/root.py, ca/signer.py, ca/tokens.py;
the directory is 0700):
  root-cert.pem     the active root
  root-key.pem      the self-signed root's private key (0600)
  ca-cert.pem, ca-key.pem, cert-chain.pem   a plug-in CA (Istio's cacerts), when present
  trust-bundle.pem  every trusted root (two during a root rotation): what bootstraps and
                    `openssl verify -CAfile` should use
  token-key.pem     the ES256 key meshd signs and verifies file-mode tokens with (0600)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ca import CertificateAuthority, RootCA, TokenAuthority, load_or_create_root, load_or_create_token_key
from ca.root import ROOT_CERT_FILE
from ca.store import TRUST_BUNDLE_FILE

from ..state import meshd_home


def default_ca_dir() -> Path:
    return meshd_home() / "ca"


def root_cert_path(ca_dir: Path) -> Path:
    return Path(ca_dir) / ROOT_CERT_FILE


def trust_bundle_path(ca_dir: Path) -> Path:
    """`trust-bundle.pem` (every trusted root, written by meshd), else `root-cert.pem`."""
    bundle = Path(ca_dir) / TRUST_BUNDLE_FILE
    return bundle if bundle.is_file() else root_cert_path(ca_dir)


@dataclass(frozen=True)
class OpenedCA:
    root: RootCA
    ca: CertificateAuthority
    tokens: TokenAuthority


def open_ca(ca_dir: Path, trust_domain: str) -> OpenedCA:
    """Load the root and the token key from `ca_dir`, creating them on first start.
    Raises ca.CAStateError when the directory holds something unsafe or inconsistent."""
    root = load_or_create_root(Path(ca_dir), trust_domain)
    return OpenedCA(root=root, ca=CertificateAuthority(root), tokens=open_tokens(ca_dir))


def open_tokens(ca_dir: Path) -> TokenAuthority:
    return TokenAuthority(load_or_create_token_key(Path(ca_dir)))

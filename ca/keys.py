"""Private keys: generation, PEM encoding, and writing them to disk safely.

Key files are created with mode 0600 from the first byte (never chmod'ed after
the fact, which leaves a window where another user can open them) and replaced
atomically (temp file + rename in the same directory), so a crash never leaves
a truncated key behind.
"""
from __future__ import annotations

import fcntl
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, get_args

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from .errors import CAStateError

KeyType = Literal["ec-p256", "rsa-2048"]
KEY_TYPES: tuple[KeyType, ...] = get_args(KeyType)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

# What we accept from others (CSRs, stored keys): NIST curves Envoy/BoringSSL
# support, and RSA no weaker than Istio's minimum of 2048 bits.
ACCEPTED_CURVES = (ec.SECP256R1, ec.SECP384R1)
MIN_RSA_BITS = 2048

PRIVATE_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644
PRIVATE_DIR_MODE = 0o700


def generate_private_key(key_type: KeyType = "ec-p256") -> PrivateKey:
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {key_type!r} (expected one of {', '.join(KEY_TYPES)})")


def key_type_of(key: PrivateKey | PublicKey) -> KeyType:
    """The KeyType that would generate a key like this one (used to match the root's type)."""
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) and isinstance(key.curve, ec.SECP256R1):
        return "ec-p256"
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)) and key.key_size == 2048:
        return "rsa-2048"
    raise ValueError(f"no key type generates {describe_key(key)}")


def describe_key(key: PrivateKey | PublicKey) -> str:
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return f"ECDSA {key.curve.name}"
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return f"RSA {key.key_size}"
    return type(key).__name__


def check_public_key(key: object) -> PublicKey:
    """Return ``key`` if it is a kind we are willing to certify, else raise ValueError."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ACCEPTED_CURVES):
            return key
        raise ValueError(f"unsupported elliptic curve {key.curve.name} (accepted: P-256, P-384)")
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size >= MIN_RSA_BITS:
            return key
        raise ValueError(f"RSA key of {key.key_size} bits is too small (minimum {MIN_RSA_BITS})")
    raise ValueError(f"unsupported public key type {type(key).__name__} (accepted: ECDSA, RSA)")


def private_key_to_pem(key: PrivateKey) -> bytes:
    # PKCS#8 ("BEGIN PRIVATE KEY") works for both key types and is what Envoy,
    # OpenSSL and Go's tls.X509KeyPair all read.
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def private_key_from_pem(data: bytes) -> PrivateKey:
    """Load an unencrypted PEM private key (PKCS#8, SEC1 or PKCS#1) of an accepted kind."""
    try:
        # OpenSSL's RSA check tests p and q for primality: 40 ms for a 2048-bit key and a
        # quarter of a second for 4096, at every start, for the CA's own key. The checks
        # below are Go's (what istiod does on the same PEM) plus the CRT values OpenSSL signs with.
        key = serialization.load_pem_private_key(data, password=None, unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError) as e:
        # The message from cryptography never contains key bytes; keep it short anyway.
        raise ValueError(f"not a usable PEM private key: {e}") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise ValueError(f"unsupported private key type {type(key).__name__}")
    if isinstance(key, rsa.RSAPrivateKey):
        check_rsa_private_numbers(key.private_numbers())
    check_public_key(key.public_key())
    return key


def check_rsa_private_numbers(n: rsa.RSAPrivateNumbers) -> None:
    """ValueError unless the key's numbers fit together: n = pq, de = 1 modulo p-1 and
    q-1 (Go's rsa.PrivateKey.Validate), and the CRT exponents and coefficient are the
    ones derived from them. Primality is not tested, as Go does not."""
    e, modulus = n.public_numbers.e, n.public_numbers.n
    if e < 3 or e % 2 == 0:
        raise ValueError("not a usable PEM private key: invalid RSA public exponent")
    if n.p < 3 or n.q < 3 or n.p * n.q != modulus:
        raise ValueError("not a usable PEM private key: RSA modulus is not the product of its primes")
    if (n.d * e) % (n.p - 1) != 1 or (n.d * e) % (n.q - 1) != 1:
        raise ValueError("not a usable PEM private key: RSA private exponent does not invert the public one")
    if n.dmp1 != n.d % (n.p - 1) or n.dmq1 != n.d % (n.q - 1) or (n.iqmp * n.q) % n.p != 1:
        raise ValueError("not a usable PEM private key: RSA CRT values do not match the key")


def public_key_to_pem(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def spki_der(key: PrivateKey | CertificatePublicKeyTypes) -> bytes:
    """DER SubjectPublicKeyInfo: the canonical bytes to compare two keys by."""
    pub = key.public_key() if isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)) else key
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# --- files -----------------------------------------------------------------


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) with mode 0700 if it does not exist yet."""
    path = Path(path)
    if path.is_dir():
        return
    if path.exists() or path.is_symlink():
        raise NotADirectoryError(f"{path} exists and is not a directory")
    # mkdir's mode is filtered by the umask; chmod makes it exactly 0700. Only the
    # owner can enter the directory in between, because umask only removes bits.
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR_MODE)


@contextmanager
def locked_dir(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a CA directory) for a load-or-create.

    Two meshd processes starting on one directory must not each create a key and
    interleave their writes (one's key with the other's certificate).
    """
    fd = os.open(Path(path) / ".lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # O_EXCL: never write through a pre-existing file or symlink an attacker planted.
    # The mode is given to open() so the file is never more permissive than `mode`
    # (the umask can only narrow it), and fchmod sets it exactly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # Make the rename itself durable, so a crash cannot roll back to no file.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_private(path: Path, data: bytes) -> None:
    """Atomically write secret ``data`` to ``path`` with mode 0600 from the start."""
    _write_atomic(Path(path), data, PRIVATE_FILE_MODE)


def write_public(path: Path, data: bytes) -> None:
    """Atomically write non-secret ``data`` (certificates) to ``path`` with mode 0644."""
    _write_atomic(Path(path), data, PUBLIC_FILE_MODE)


def read_private(path: Path) -> bytes:
    """Read a secret file, refusing it if its group or others have any access to it.

    A key others could read must be presumed leaked; serving certificates signed
    with it would hide that, so we stop instead (like ssh does with identity files).
    """
    path = Path(path)
    # Symlinks are followed on purpose (Kubernetes mounts Secrets as symlinks);
    # the mode check is on the file actually opened, not on the name.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CAStateError(f"{path} is not a regular file")
        perms = stat.S_IMODE(st.st_mode)
        if perms & 0o077:
            raise CAStateError(
                f"refusing to use {path}: mode {perms:04o} lets group/others access the private key; "
                f"it must be 0600 (chmod 600 {path}), and if others could read it, replace the key"
            )
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)

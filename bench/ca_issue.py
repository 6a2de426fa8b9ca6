"""Certificate issuance throughput of meshd's CA: ECDSA P-256 vs RSA 2048.

Prints figures; asserts nothing. For each root key type and workload key type:
  keygen+sign  issue_workload(): generate the workload key, then sign (file mode)
  sign-only    sign_csr(): verify a CSR and sign it (what a workload's CSR costs
               meshd; the CSRs are made before the clock starts)
plus ES256 token issue/verify. Single thread, logging off.

Then, per workload key type, what rotation costs the running control plane: a burst of
renewals through WorkloadSecrets on the CA's worker thread (as the rotation scheduler
issues them) while a probe task on the event loop measures how late it wakes up (the
event loop lag a config push would see), compared with the lag when nothing is issued.

    python bench/ca_issue.py [--iterations 200]
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cryptography
from cryptography import x509
from cryptography.hazmat.backends.openssl.backend import backend
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca import CertificateAuthority, Identity, TokenAuthority, load_or_create_root
from ca.keys import KEY_TYPES, KeyType, generate_private_key


class NullLogger:
    def __getattr__(self, _name):
        return lambda *a, **kw: None


def rate(n: int, fn) -> tuple[float, float]:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    elapsed = time.perf_counter() - start
    return n / elapsed, elapsed / n * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    n = parser.parse_args().iterations
    identities = [Identity("cluster.local", "bench", f"sa-{i}") for i in range(n)]

    print(f"meshd CA issuance, {n} iterations each; Python {platform.python_version()}, "
          f"cryptography {cryptography.__version__} ({backend.openssl_version_text()}), {platform.machine()}")
    print(f"{'root':<10} {'workload':<10} {'mode':<12} {'certs/s':>9} {'ms/cert':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for root_type in KEY_TYPES:
            root = load_or_create_root(Path(tmp) / root_type, key_type=root_type, logger=NullLogger())
            authority = CertificateAuthority(root, logger=NullLogger())
            for leaf_type in KEY_TYPES:
                per_sec, ms = rate(n, lambda i, authority=authority, leaf_type=leaf_type: authority.issue_workload(
                    identities[i], key_type=leaf_type))
                print(f"{root_type:<10} {leaf_type:<10} {'keygen+sign':<12} {per_sec:>9.1f} {ms:>9.2f}")
                csrs = []
                for _ in range(n):
                    key = generate_private_key(leaf_type)
                    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
                    csrs.append(csr.public_bytes(serialization.Encoding.PEM))
                per_sec, ms = rate(n, lambda i, authority=authority, csrs=csrs: authority.sign_csr(csrs[i], identities[i]))
                print(f"{root_type:<10} {leaf_type:<10} {'sign-only':<12} {per_sec:>9.1f} {ms:>9.2f}")

        tokens = TokenAuthority(ec.generate_private_key(ec.SECP256R1()))
        per_sec, ms = rate(n, lambda i: tokens.issue("bench", f"sa-{i}"))
        print(f"{'ES256 JWT':<21} {'issue':<12} {per_sec:>9.1f} {ms:>9.2f}")
        issued = [tokens.issue("bench", f"sa-{i}") for i in range(n)]
        per_sec, ms = rate(n, lambda i: tokens.verify(issued[i]))
        print(f"{'ES256 JWT':<21} {'verify':<12} {per_sec:>9.1f} {ms:>9.2f}")


async def _loop_lag_during(n: int, key_type: KeyType, authority) -> tuple[float, float, float]:
    """(certs/s, p99 lag ms, max lag ms) of n renewals on the CA thread, probed every 1 ms."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor
    from datetime import timedelta

    from controlplane.security.sds import WorkloadSecrets

    lags: list[float] = []
    done = asyncio.Event()

    async def probe():
        while not done.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append((time.perf_counter() - t - 0.001) * 1000)

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="meshd-ca")
    secrets = WorkloadSecrets(authority, "cluster.local", timedelta(hours=24), key_type=key_type,
                              executor=executor, logger=NullLogger())
    task = asyncio.create_task(probe())
    await asyncio.sleep(0.05)
    lags.clear()
    start = time.perf_counter()
    for i in range(n):
        await secrets.renew(Identity("cluster.local", "bench", f"sa-{i}"))
    elapsed = time.perf_counter() - start
    done.set()
    await task
    executor.shutdown()
    lags.sort()
    return n / elapsed, lags[int(len(lags) * 0.99)] if lags else 0.0, max(lags or [0.0])


async def _idle_lag(seconds: float = 0.5) -> tuple[float, float]:
    import asyncio

    lags = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append((time.perf_counter() - t - 0.001) * 1000)
    lags.sort()
    return lags[int(len(lags) * 0.99)], max(lags)


def rotation_bench(n: int) -> None:
    import asyncio

    print()
    print(f"rotation on the running control plane: {n} renewals in a row on the CA's worker thread,")
    print("event loop probed every 1 ms (lag = how late it woke up; a config push waits as long)")
    print(f"{'workload key':<12} {'certs/s':>9} {'loop lag p99':>13} {'loop lag max':>13}")
    p99, mx = asyncio.run(_idle_lag())
    print(f"{'(idle)':<12} {'':>9} {p99:>10.2f} ms {mx:>10.2f} ms")
    with tempfile.TemporaryDirectory() as tmp:
        root = load_or_create_root(Path(tmp) / "root", logger=NullLogger())
        authority = CertificateAuthority(root, logger=NullLogger())
        for leaf_type in KEY_TYPES:
            per_sec, p99, mx = asyncio.run(_loop_lag_during(n, leaf_type, authority))
            print(f"{leaf_type:<12} {per_sec:>9.1f} {p99:>10.2f} ms {mx:>10.2f} ms")


if __name__ == "__main__":
    main()
    rotation_bench(100)

"""Workload identity in the control plane: who is on an xDS stream, and what secrets
they may receive.

- `cadir`: where the CA's files live and how meshd opens them (root, token key).
- `authn`: authenticators turning a stream's gRPC metadata into an `Identity`
  (file mode: meshd's own JWTs; Kubernetes TokenReview, kube/tokenreview.py, plugs in
  behind the same interface).
- `authz`: the one rule that ties a connection's identity to the node it claims to be.
- `sds`: the SDS secrets `default` (the workload's key and certificate) and `ROOTCA`
  (the trust bundle), issued per identity and cached; never shared across identities.
- `serving`: meshd's own certificate for the secure xDS port (15012), reissued in time.
- `authority`: the running CA: active signer, trust bundle, root rotation in phases.
- `rotation`: renews workload certificates ahead of expiry and pushes them over SDS.
- `ca_service`: the Istio CA API (IstioCertificateService/CreateCertificate).
- `plane`: all of the above wired together for `meshd serve`.
"""

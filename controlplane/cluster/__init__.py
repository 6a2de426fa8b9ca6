"""meshd as a member of a Kubernetes cluster: the work several replicas share.

- `kubeapi`: plain JSON requests to the API server through the `kubernetes` client's
  connection (auth, TLS, in-cluster token refresh), sync or off the event loop.
- `leader`: leader election on a `coordination.k8s.io/v1` Lease; work that must happen
  once (status, events, trust bundle ConfigMaps) runs only on the leader.
- `status`: the verdict on each Istio object, where operators look: a condition and an
  IST0106 validation message in `.status`, and a Warning Event on the object.
- `rootcert`: the trust bundle as ConfigMap `istio-ca-root-cert` in every namespace.
- `member`: the above wired for `meshd serve` (with TokenReview and the CA in Secrets,
  controlplane/security/tokenreview.py and kube_ca.py); `options`: its flags.
"""

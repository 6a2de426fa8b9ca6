"""Kubernetes, in one room: meshd as a source of config from a cluster, and as a member of
that cluster (the work several replicas share).

Talking to the API server:
- `http`: meshd's HTTP client for the API server (one pool, one TLS context; a
  `kubernetes` ApiClient wrapped for what it does not read itself); `client`: that
  client from a kubeconfig or in-cluster; `kubeconfig`: meshd's reader for plain
  kubeconfigs; `libimport`: `kubernetes.client` without the package's `__init__`, for
  when the library is used (exec/auth-provider kubeconfigs): `meshd serve` with a plain
  kubeconfig or in a pod never imports the library (bench/README.md "Start-up").
- `prefetch`: the initial lists asked for at the very start of `meshd serve` (cli.py),
  listed and parsed while the rest of meshd is imported; each reflector takes its own.
- `api`: plain JSON requests through that client (auth, TLS, in-cluster token
  refresh), sync or off the event loop; `ApiError`, REST paths.

The source (config into the store, as the directory source does):
- `resources`: the table of what is watched: one entry per kind, its API version, the
  store location of each object, an API object as a document for the parse gate.
- `reflector`: one list+watch of one kind, in its own thread (client-go's protocol).
- `source`: `KubernetesSource`, every reflector feeding the store on the event loop.

The cluster member (`meshd serve --kubeconfig/--in-cluster`):
- `leader`: leader election on a `coordination.k8s.io/v1` Lease; work that must happen
  once (status, events, trust bundle ConfigMaps) runs only on the leader.
- `status`: the verdict on each Istio object, where operators look: a condition and an
  IST0106 validation message in `.status`, and a Warning Event on the object.
- `rootcert`: the trust bundle as ConfigMap `istio-ca-root-cert` in every namespace.
- `tokenreview`: a proxy's ServiceAccount token, checked with the TokenReview API (an
  authenticator behind security/authn.py's interface).
- `ca_secrets`: the CA directory as a mirror of Secrets istio-ca-secret / cacerts.
- `member`: the above wired for `meshd serve`; `options`: its flags (free of the
  `kubernetes` import, so that every other command starts fast).

This room reads the config stage (the parse gate, the store) and implements security's
interfaces; it never imports the CLI, app.py, the server or debug. app.py wires it to
security (tests/unit/test_architecture.py holds the rules).
"""

from .libimport import skip_package_init

skip_package_init()  # whoever imports kubernetes.client (tests, exec kubeconfigs) gets just that

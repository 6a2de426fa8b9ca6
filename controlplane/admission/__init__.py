"""meshd as the cluster's admission webhooks, as istiod serves them on port 15017:

- `review`: AdmissionReview v1 and v1beta1 in and out (pure): a request parsed or the
  reason it cannot be, a response allowing, denying (with a status message) or patching.
- `validate`: `/validate`, Istio's kinds through the parse gate every source uses
  (config/parse.py): an object `meshd serve` would reject is refused at `kubectl apply`.
- `inject`: `/inject`, sidecar injection with controlplane/inject's decide/inject_pod.
- `certificate`: the webhook port's serving certificate from meshd's CA, renewed
  before it expires and when the CA's serving signer changes.
- `server`: the HTTPS server (its own threads, off the xDS event loop).
- `patcher`: leader work: the caBundle (and the validating webhooks' failurePolicy) of
  meshd's webhook configurations kept equal to meshd's root, as istiod's webhook
  controllers do.

app.py wires these in Kubernetes mode (docs/webhooks.md).
"""

"""The init step of an injected pod (`meshd pod-init`, docs/pod-init.md).

- iptables.py: istio-iptables' flags -> the interception rules (one iptables-restore);
- downward.py: the downward API (env, labels file) and ProxyConfig -> the sidecar's
  bootstrap, with the projected token read by Envoy on every connection.
"""

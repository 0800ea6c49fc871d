"""The zt-relay Kubernetes operator: ZeroTierRelay resources reconciled by Kopf.

Modules: ``builders`` (pure: spec to child manifests), ``validation`` (pure: spec checks
the schema cannot express), ``status`` (pure: children to status and conditions),
``kube`` (the only module calling the API server for children), ``reconcile`` (one pass
tying them together), ``handlers`` (thin Kopf handlers), ``metrics``, ``settings``, ``cli``.
"""

GROUP = "relay.zt-relay.dev"
VERSION = "v1alpha1"
PLURAL = "zerotierrelays"
KIND = "ZeroTierRelay"
API_VERSION = f"{GROUP}/{VERSION}"

FIELD_MANAGER = "zt-relay-operator"
"""Server-side apply field manager: the operator owns exactly the fields it sends."""

OLD_FINALIZER = f"{GROUP}/finalizer"
"""The finalizer operator versions before 0.2 added; removed wherever it is seen (relays
need none: their children's ownerReferences give garbage collection)."""

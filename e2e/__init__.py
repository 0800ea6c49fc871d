"""End-to-end tests and the harness that gives them a real Kubernetes.

`e2e.cluster` assembles a single-node cluster on this machine (`python -m e2e.cluster up`);
`e2e/conftest.py` exposes it, kind, or an existing cluster to pytest.
"""

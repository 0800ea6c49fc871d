"""The pytest plugins every pytest process here loads (the parts, their xdist workers, the inner
pytests some tests run): only those the suite uses."""


def test_pytest_kinds_plugin_is_not_loaded(pytestconfig):
    """pytest-kind's plugin is a `kind_cluster` fixture and its options, which nothing here uses
    (e2e/conftest.py's kind backend takes `KindCluster` from the package itself), and loading it
    imports pykube and requests: ~0.3 core-seconds in each pytest process, for nothing. It is
    blocked in pyproject.toml's addopts."""
    assert not pytestconfig.pluginmanager.has_plugin("pytest-kind")
    assert pytestconfig.pluginmanager.is_blocked("pytest-kind")

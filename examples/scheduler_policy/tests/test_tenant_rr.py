from llmserve.plugin_testing.scheduling import check_scheduling_policy

from llmserve_tenant_rr import TenantRoundRobin


def test_conforms():
    check_scheduling_policy(TenantRoundRobin)

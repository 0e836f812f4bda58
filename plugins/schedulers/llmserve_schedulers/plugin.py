"""Hook implementations of the schedulers plugin (entry point ``schedulers`` in group
``llmserve``).

Every llmserve process imports this module, so it imports the policies only inside the hook
(they pull in numpy; none of them needs torch).
"""

from __future__ import annotations

from llmserve import hookimpl

#: The llmserve plugin API versions this plugin is written against (checked at load): the
#: policies use ``Options``, ``on_step``, ``metrics`` and ``cached_prefix_tokens`` of 1.2.
LLMSERVE_PLUGIN_API = ">=1.2,<2"


@hookimpl
def llmserve_scheduling_policies():
    from llmserve_schedulers.cache_aware import CacheAwarePolicy
    from llmserve_schedulers.deadline import DeadlinePolicy
    from llmserve_schedulers.fair import FairPolicy
    from llmserve_schedulers.sjf import ShortestJobFirstPolicy

    return {policy.name: policy
            for policy in (FairPolicy, ShortestJobFirstPolicy, DeadlinePolicy, CacheAwarePolicy)}

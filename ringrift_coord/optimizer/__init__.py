"""The resource optimizer's core: hardware caps (``capacity``), the store's optimizer tables
(``state``), the PID controller (``pid``), the utilization trend (``trend``), cluster
utilization (``utilization``), the feedback step (``adjust``), rate negotiation
(``negotiate``) and the config-weighted split (``distribution``). ``resource_optimizer``
is the public façade over them.
"""

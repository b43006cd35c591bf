"""Fault injection for RAM, the Jepsen way: a fault library with an undo for every fault
(:mod:`tests.faults.faults`, network cuts in :mod:`tests.faults.net`), a write workload recording every
operation (:mod:`tests.faults.workload`), checkers over the history and the cluster
(:mod:`tests.faults.checkers`) and the chaos runner behind ``bench/chaos.py`` (:mod:`tests.faults.runner`).
"""

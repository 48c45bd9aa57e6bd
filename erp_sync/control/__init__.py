"""The control plane: what admins and operators change, and the rules every change obeys.

Companies, projects and users (``store``, ``lifecycle``, ``permissions``, ``access``), pauses
(``pause``), ERP connections and their encrypted secrets (``connections``, ``vault``), and the
validators every input passes (``inputs``). Each change is one ``UnitOfWork`` (``store``): a
WATCH/MULTI transaction that re-checks permission, writes, audits and, where beat must re-plan,
puts a message on the change stream. Nothing here knows about beat, workers or connectors.
"""

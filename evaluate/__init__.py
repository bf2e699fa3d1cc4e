"""evaluate: splits, full-ranking metrics, paired significance tests and reports (pure functions).

Never trains and never imports ``train`` or ``ray``. Import the submodules you need
(``evaluate.splits``, ``evaluate.metrics``, ``evaluate.significance``, ``evaluate.report``):
importing the package itself stays light (no torch, scipy or matplotlib).
"""

"""SelectBest: rank a sweep's points and write sweeps/<id>/result.json (also follows a point
whose job continued in a new execution: ``action: point_status``)."""

from lambdagrad.runtime import powertools_handler
from lambdagrad.sweep import select_best_step

lambda_handler = powertools_handler("select-best", select_best_step, "sweep_id")

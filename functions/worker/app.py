"""Worker: one shard's mini-batch gradient for one round."""

from lambdagrad.runtime import powertools_handler
from lambdagrad.steps import worker

lambda_handler = powertools_handler("worker", worker)

"""Worker: one shard's mini-batch gradient for one round."""

from aws_lambda_powertools import Logger
from lambdagrad import native
from lambdagrad.runtime import powertools_handler
from lambdagrad.steps import worker

# Once per cold start: whether the fused C kernels or the numpy fallback compute gradients.
Logger(service="lambdagrad-worker").info("gradient kernels", extra={"kernels": native.STATUS})

lambda_handler = powertools_handler("worker", worker)

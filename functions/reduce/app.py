"""Reduce: sum gradients in shard order, apply the optimizer, write params t+1."""

from lambdagrad.runtime import powertools_handler
from lambdagrad.steps import reduce

lambda_handler = powertools_handler("reduce", reduce)

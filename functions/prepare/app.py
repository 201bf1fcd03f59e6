"""Prepare: validate the job spec, split and standardize the dataset, write shards and params 0."""

from lambdagrad.runtime import powertools_handler
from lambdagrad.steps import prepare

lambda_handler = powertools_handler("prepare", prepare, "input.job_id")

"""Finalize: write model.npz, model.json and history.csv; mark the job succeeded."""

from lambdagrad.runtime import powertools_handler
from lambdagrad.steps import finalize

lambda_handler = powertools_handler("finalize", finalize)

"""RecordFailure: write the error name and message into the job's status.json."""

from lambdagrad.runtime import powertools_handler
from lambdagrad.steps import record_failure

lambda_handler = powertools_handler("record-failure", record_failure, "state.job_id")
